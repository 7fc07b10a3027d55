//! Fuzzes the handshake message decoders (`Hello`, `Challenge`, `Auth`, `Welcome`,
//! `Reject`) on a frame built from the input.
//!
//! Input: one selector byte, then the frame payload. The selector's low 7 bits pick the
//! frame type (one of the five handshake types or Data), and its high bit puts the frame
//! on stream 1 instead of stream 0. Every decoder runs on every frame, so the checks of
//! frame type and stream id are fuzzed as well.

#![no_main]

use ipaas_gateway::protocol::frame::{self, Frame, FrameHeader, FrameType, HEADER_LEN};
use ipaas_gateway::protocol::handshake::{
    self, HandshakeError, MAX_HANDSHAKE_PAYLOAD, MAX_MESSAGE_LEN, MAX_SERVICES, MAX_SIGNATURE_LEN,
};
use ipaas_gateway::protocol::{Auth, Challenge, Hello, Reject, Welcome, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;

/// Frame types the selector picks from.
const KINDS: [FrameType; 6] = [
    FrameType::Hello,
    FrameType::Challenge,
    FrameType::Auth,
    FrameType::Welcome,
    FrameType::Reject,
    FrameType::Data,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    // The receiver's frame decoder rejects longer handshake frames before they get here.
    let Ok(len) = u32::try_from(payload.len()) else {
        return;
    };
    if len > MAX_HANDSHAKE_PAYLOAD {
        return;
    }

    let kind = KINDS[usize::from(selector & 0x7f) % KINDS.len()];
    let stream_id = u32::from(selector >> 7);
    let frame = Frame {
        header: FrameHeader {
            kind,
            flags: 0,
            stream_id,
            len,
        },
        payload,
    };
    let mut encoded = Vec::with_capacity(HEADER_LEN + payload.len());
    frame::encode_frame(kind, 0, stream_id, payload, &mut encoded);

    check_hello(&frame, &encoded);
    check_challenge(&frame, &encoded);
    check_auth(&frame, &encoded);
    check_welcome(&frame, &encoded);
    check_reject(&frame, &encoded);
});

/// Checks that a decoder rejects a frame of another type or on another stream with the
/// error that names it, and returns true when the frame is one the decoder reads.
fn expect_addressed(
    frame: &Frame<'_>,
    expected: FrameType,
    result: Result<(), &HandshakeError>,
) -> bool {
    if frame.header.kind != expected {
        assert!(
            matches!(result, Err(HandshakeError::UnexpectedFrame { .. })),
            "{expected} decoder on a {} frame: {result:?}",
            frame.header.kind
        );
        return false;
    }
    if frame.header.stream_id != 0 {
        assert!(
            matches!(result, Err(HandshakeError::WrongStream { .. })),
            "{expected} decoder on stream {}: {result:?}",
            frame.header.stream_id
        );
        return false;
    }
    true
}

fn check_hello(frame: &Frame<'_>, encoded: &[u8]) {
    let result = Hello::decode(frame);
    if !expect_addressed(frame, FrameType::Hello, result.as_ref().map(|_| ())) {
        return;
    }
    let Ok(hello) = result else {
        return;
    };

    handshake::validate_name("gateway id", &hello.gateway_id).unwrap();
    handshake::validate_name("agent name", &hello.agent_name).unwrap();
    let mut again = Vec::new();
    hello.encode(&mut again);
    if hello.version == PROTOCOL_VERSION {
        assert_eq!(again, encoded);
    } else {
        // A Hello of another version may carry more fields, which the decoder skips, so
        // only the version 1 fields at the front come back.
        assert!(frame.payload.starts_with(&again[HEADER_LEN..]));
    }
}

fn check_challenge(frame: &Frame<'_>, encoded: &[u8]) {
    let result = Challenge::decode(frame);
    if !expect_addressed(frame, FrameType::Challenge, result.as_ref().map(|_| ())) {
        return;
    }
    if let Ok(challenge) = result {
        let mut again = Vec::new();
        challenge.encode(&mut again);
        assert_eq!(again, encoded);
    }
}

fn check_auth(frame: &Frame<'_>, encoded: &[u8]) {
    let result = Auth::decode(frame);
    if !expect_addressed(frame, FrameType::Auth, result.as_ref().map(|_| ())) {
        return;
    }
    if let Ok(auth) = result {
        assert!((1..=MAX_SIGNATURE_LEN).contains(&auth.signature.len()));
        let mut again = Vec::new();
        auth.encode(&mut again);
        assert_eq!(again, encoded);
    }
}

fn check_welcome(frame: &Frame<'_>, encoded: &[u8]) {
    let result = Welcome::decode(frame);
    if !expect_addressed(frame, FrameType::Welcome, result.as_ref().map(|_| ())) {
        return;
    }
    let Ok(welcome) = result else {
        return;
    };

    assert!(welcome.heartbeat_interval_ms >= 1);
    assert!(welcome.heartbeat_interval_ms < welcome.heartbeat_timeout_ms);
    assert!(welcome.services.len() <= MAX_SERVICES);
    for name in &welcome.services {
        handshake::validate_name("service name", name).unwrap();
    }
    let mut again = Vec::new();
    welcome.encode(&mut again);
    assert_eq!(again, encoded);
}

fn check_reject(frame: &Frame<'_>, encoded: &[u8]) {
    let result = Reject::decode(frame);
    if !expect_addressed(frame, FrameType::Reject, result.as_ref().map(|_| ())) {
        return;
    }
    if let Ok(reject) = result {
        assert!(reject.message.len() <= MAX_MESSAGE_LEN);
        let mut again = Vec::new();
        reject.encode(&mut again);
        assert_eq!(again, encoded);
    }
}
