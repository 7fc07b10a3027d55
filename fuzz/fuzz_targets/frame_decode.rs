//! Fuzzes `frame::decode` with the default maximum payload on a stream of frames, and the
//! parsers of the fixed-size control payloads on every frame it returns.
//!
//! Input: raw bytes as received from a peer, any number of frames back to back.

#![no_main]

use ipaas_gateway::protocol::frame::{
    self, Frame, FrameType, DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAX_STREAM_ID,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match frame::decode(rest, DEFAULT_MAX_PAYLOAD) {
            Ok(Some((frame, used))) => {
                check_frame(&frame, used, rest);
                check_control_payload(&frame);
                rest = &rest[used..];
            }
            Ok(None) => {
                check_incomplete(rest);
                break;
            }
            Err(error) => {
                // An error comes from the header alone, so the header decoder agrees.
                let header = rest
                    .first_chunk::<HEADER_LEN>()
                    .expect("decode failed before the header was complete");
                assert_eq!(
                    frame::decode_header(header, DEFAULT_MAX_PAYLOAD),
                    Err(error)
                );
                break;
            }
        }
    }
});

/// Checks a decoded frame against the bytes it came from, and that encoding it again
/// gives exactly those bytes.
fn check_frame(frame: &Frame<'_>, used: usize, input: &[u8]) {
    let header = frame.header;
    assert_eq!(used, HEADER_LEN + header.len as usize);
    assert!(used <= input.len());
    assert_eq!(frame.payload.len(), header.len as usize);
    assert!(header.len <= DEFAULT_MAX_PAYLOAD);
    assert!(header.stream_id <= MAX_STREAM_ID);

    let mut encoded = Vec::with_capacity(used);
    frame::encode_frame(
        header.kind,
        header.flags,
        header.stream_id,
        frame.payload,
        &mut encoded,
    );
    assert_eq!(encoded, &input[..used]);
}

/// Checks that `Ok(None)` means a valid header whose frame is not complete yet.
fn check_incomplete(input: &[u8]) {
    let Some(header) = input.first_chunk::<HEADER_LEN>() else {
        return;
    };
    let header = frame::decode_header(header, DEFAULT_MAX_PAYLOAD)
        .expect("decode returned Ok(None) for an invalid header");
    assert!(input.len() < HEADER_LEN + header.len as usize);
}

/// Parses the payload of a control frame. Checks that it parses exactly when it has the
/// fixed size of its type, and that a parsed value encodes back to the same payload.
fn check_control_payload(frame: &Frame<'_>) {
    let payload = frame.payload;
    match frame.header.kind {
        FrameType::Reset => {
            let reason = frame::parse_reset(frame);
            assert_eq!(reason.is_ok(), payload.len() == 4);
            if let Ok(reason) = reason {
                assert_eq!(reason.to_u32().to_be_bytes(), payload);
            }
        }
        FrameType::WindowUpdate => {
            let increment = frame::parse_window_update(frame);
            assert_eq!(increment.is_ok(), payload.len() == 4);
            if let Ok(increment) = increment {
                assert_eq!(increment.to_be_bytes(), payload);
            }
        }
        FrameType::Ping => {
            let value = frame::parse_ping(frame);
            assert_eq!(value.is_ok(), payload.len() == 8);
            if let Ok(value) = value {
                assert_eq!(value.to_be_bytes(), payload);
            }
        }
        FrameType::GoAway => {
            let parsed = frame::parse_go_away(frame);
            let reserved_bit = payload.first().is_some_and(|byte| byte & 0x80 != 0);
            assert_eq!(parsed.is_ok(), payload.len() == 8 && !reserved_bit);
            if let Ok((last_stream_id, reason)) = parsed {
                let mut encoded = Vec::new();
                frame::encode_go_away(last_stream_id, reason, &mut encoded);
                assert_eq!(&encoded[HEADER_LEN..], payload);
            }
        }
        _ => {}
    }
}
