//! Property tests of the wire codec. Frames and handshake messages survive an encode and
//! decode round trip with any valid field values. Decoders return an error instead of
//! panicking on any bytes. A byte stream decodes to the same frames wherever it is split.
//!
//! The fuzz targets in `fuzz/` check the same decoders with coverage guidance. These tests
//! run with `cargo test` on every build.

use std::ops::RangeInclusive;

use proptest::collection::vec;
use proptest::prelude::*;

use ipaas_gateway::protocol::frame::{
    self, FrameHeader, FrameType, GoAwayReason, ResetReason, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
    MAX_PAYLOAD_LIMIT, MAX_STREAM_ID,
};
use ipaas_gateway::protocol::handshake::{
    MAX_HANDSHAKE_PAYLOAD, MAX_MESSAGE_LEN, MAX_NAME_LEN, MAX_SERVICES, MAX_SIGNATURE_LEN,
    NONCE_LEN,
};
use ipaas_gateway::protocol::{
    Auth, Challenge, Event, Frame, Hello, Mux, MuxConfig, Reject, RejectReason, Role, Welcome,
};

const ALL_TYPES: [FrameType; 11] = [
    FrameType::Data,
    FrameType::Open,
    FrameType::Reset,
    FrameType::WindowUpdate,
    FrameType::Ping,
    FrameType::GoAway,
    FrameType::Hello,
    FrameType::Challenge,
    FrameType::Auth,
    FrameType::Welcome,
    FrameType::Reject,
];

/// A decoded frame that owns its payload, so frames from different buffers compare.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedFrame {
    kind: FrameType,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

impl OwnedFrame {
    fn of(frame: &Frame<'_>) -> Self {
        Self {
            kind: frame.header.kind,
            flags: frame.header.flags,
            stream_id: frame.header.stream_id,
            payload: frame.payload.to_vec(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        frame::encode_frame(self.kind, self.flags, self.stream_id, &self.payload, out);
    }
}

fn frame_type() -> impl Strategy<Value = FrameType> {
    proptest::sample::select(&ALL_TYPES[..])
}

fn stream_id() -> impl Strategy<Value = u32> {
    0..=MAX_STREAM_ID
}

/// Generates frames that the default limits accept, with payloads up to 2 KiB to keep
/// runs short.
fn owned_frame() -> impl Strategy<Value = OwnedFrame> {
    (
        frame_type(),
        any::<u8>(),
        stream_id(),
        vec(any::<u8>(), 0..=2048),
    )
        .prop_map(|(kind, flags, stream_id, payload)| OwnedFrame {
            kind,
            flags,
            stream_id,
            payload,
        })
}

/// Generates valid gateway ids, agent names and service names.
fn name() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{MAX_NAME_LEN}}}"))
        .expect("name pattern is a valid regex")
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), name(), name(), any::<[u8; 16]>()).prop_map(
        |(version, gateway_id, agent_name, instance_id)| Hello {
            version,
            gateway_id,
            agent_name,
            instance_id,
        },
    )
}

fn welcome(services: RangeInclusive<usize>) -> impl Strategy<Value = Welcome> {
    (
        any::<u64>(),
        1..u32::MAX,
        any::<u32>(),
        vec(name(), services),
    )
        .prop_map(|(session_id, interval, extra, services)| Welcome {
            session_id,
            heartbeat_interval_ms: interval,
            // Any timeout above the interval.
            heartbeat_timeout_ms: interval + 1 + extra % (u32::MAX - interval),
            services,
        })
}

fn reject() -> impl Strategy<Value = Reject> {
    // Up to 400 characters of up to 4 bytes each, so some messages reach the cut at
    // MAX_MESSAGE_LEN bytes.
    (
        any::<u16>(),
        proptest::string::string_regex(".{0,400}").unwrap(),
    )
        .prop_map(|(code, message)| Reject::new(RejectReason::from_u16(code), message))
}

/// Decodes exactly one frame from `bytes`, with the handshake limit.
fn decode_one(bytes: &[u8]) -> Frame<'_> {
    let (frame, used) = frame::decode(bytes, MAX_HANDSHAKE_PAYLOAD)
        .expect("encoded frame decodes")
        .expect("encoded frame is complete");
    assert_eq!(used, bytes.len(), "one encoded message is one frame");
    frame
}

/// Decodes frames as bytes arrive in `chunks`, as a receiver does, and returns every
/// frame completed. Panics on a decode error.
fn decode_stream<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<OwnedFrame> {
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        let mut start = 0;
        while let Some((frame, used)) =
            frame::decode(&buffer[start..], DEFAULT_MAX_PAYLOAD).expect("valid stream")
        {
            frames.push(OwnedFrame::of(&frame));
            start += used;
        }
        buffer.drain(..start);
    }
    assert!(buffer.is_empty(), "{} bytes left undecoded", buffer.len());
    frames
}

/// Cuts `bytes` at the given offsets, which are taken modulo `bytes.len() + 1`.
fn split_at_offsets<'a>(bytes: &'a [u8], offsets: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = offsets
        .iter()
        .map(|offset| offset % (bytes.len() + 1))
        .collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|pair| &bytes[pair[0]..pair[1]])
        .collect()
}

proptest! {
    #[test]
    fn frame_round_trip_any_type(frame in owned_frame()) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        prop_assert_eq!(bytes.len(), HEADER_LEN + frame.payload.len());

        let (decoded, used) = frame::decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(decoded.header.len as usize, frame.payload.len());
        prop_assert_eq!(OwnedFrame::of(&decoded), frame);
    }

    #[test]
    fn frame_header_round_trip_any_length(
        kind in frame_type(),
        flags in any::<u8>(),
        stream_id in stream_id(),
        len in 0..=MAX_PAYLOAD_LIMIT,
    ) {
        let header = FrameHeader { kind, flags, stream_id, len };
        let mut bytes = Vec::new();
        frame::encode_header(&header, &mut bytes);
        let bytes: [u8; HEADER_LEN] = bytes.try_into().unwrap();
        prop_assert_eq!(frame::decode_header(&bytes, MAX_PAYLOAD_LIMIT), Ok(header));
    }

    #[test]
    fn control_frames_round_trip(
        stream_id in stream_id(),
        reset_code in any::<u32>(),
        increment in any::<u32>(),
        ping in any::<u64>(),
        ack in any::<bool>(),
        last_stream_id in stream_id(),
        go_away_code in any::<u32>(),
    ) {
        let mut bytes = Vec::new();
        frame::encode_reset(stream_id, ResetReason::from_u32(reset_code), &mut bytes);
        let reason = frame::parse_reset(&decode_one(&bytes)).unwrap();
        prop_assert_eq!(reason.to_u32(), reset_code);

        bytes.clear();
        frame::encode_window_update(stream_id, increment, &mut bytes);
        prop_assert_eq!(frame::parse_window_update(&decode_one(&bytes)), Ok(increment));

        bytes.clear();
        let flags = if ack { frame::flags::ACK } else { 0 };
        frame::encode_ping(flags, ping, &mut bytes);
        let decoded = decode_one(&bytes);
        prop_assert_eq!(decoded.header.flags, flags);
        prop_assert_eq!(frame::parse_ping(&decoded), Ok(ping));

        bytes.clear();
        frame::encode_go_away(last_stream_id, GoAwayReason::from_u32(go_away_code), &mut bytes);
        let (last, reason) = frame::parse_go_away(&decode_one(&bytes)).unwrap();
        prop_assert_eq!(last, last_stream_id);
        prop_assert_eq!(reason.to_u32(), go_away_code);
    }

    #[test]
    fn hello_round_trip(hello in hello()) {
        let mut bytes = Vec::new();
        hello.encode(&mut bytes);
        prop_assert_eq!(Hello::decode(&decode_one(&bytes)), Ok(hello));
    }

    #[test]
    fn challenge_round_trip(nonce in any::<[u8; NONCE_LEN]>()) {
        let challenge = Challenge { nonce };
        let mut bytes = Vec::new();
        challenge.encode(&mut bytes);
        prop_assert_eq!(Challenge::decode(&decode_one(&bytes)), Ok(challenge));
    }

    #[test]
    fn auth_round_trip(signature in vec(any::<u8>(), 1..=MAX_SIGNATURE_LEN)) {
        let auth = Auth { signature };
        let mut bytes = Vec::new();
        auth.encode(&mut bytes);
        prop_assert_eq!(Auth::decode(&decode_one(&bytes)), Ok(auth));
    }

    #[test]
    fn welcome_round_trip(welcome in welcome(0..=32)) {
        let mut bytes = Vec::new();
        welcome.encode(&mut bytes);
        prop_assert_eq!(Welcome::decode(&decode_one(&bytes)), Ok(welcome));
    }

    #[test]
    fn reject_round_trip(reject in reject()) {
        prop_assert!(reject.message.len() <= MAX_MESSAGE_LEN);
        let mut bytes = Vec::new();
        reject.encode(&mut bytes);
        prop_assert_eq!(Reject::decode(&decode_one(&bytes)), Ok(reject));
    }

    #[test]
    fn frame_decode_any_bytes(
        bytes in vec(any::<u8>(), 0..=64),
        max_payload in 0..=MAX_PAYLOAD_LIMIT,
    ) {
        match frame::decode(&bytes, max_payload) {
            Ok(Some((decoded, used))) => {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(used, HEADER_LEN + decoded.payload.len());
                prop_assert!(decoded.header.len <= max_payload);
            }
            Ok(None) => {}
            Err(_) => prop_assert!(bytes.len() >= HEADER_LEN),
        }
    }

    #[test]
    fn handshake_decode_any_payload(
        kind in frame_type(),
        stream_id in 0..=2u32,
        payload in vec(any::<u8>(), 0..=512),
    ) {
        // Every decoder on every frame type; only the result's existence matters here.
        let mut bytes = Vec::new();
        frame::encode_frame(kind, 0, stream_id, &payload, &mut bytes);
        let frame = decode_one(&bytes);
        let _ = Hello::decode(&frame);
        let _ = Challenge::decode(&frame);
        let _ = Auth::decode(&frame);
        let _ = Welcome::decode(&frame);
        let _ = Reject::decode(&frame);
    }

    #[test]
    fn mux_input_any_bytes(
        bytes in vec(any::<u8>(), 0..=256),
        agent in any::<bool>(),
    ) {
        let role = if agent { Role::Agent } else { Role::Server };
        let mut mux = Mux::new(role, MuxConfig::default());
        let _ = mux.handle_input(&bytes);
        while mux.poll_event().is_some() {}
    }

    #[test]
    fn split_stream_decodes_same_frames(
        frames in vec(owned_frame(), 1..=8),
        offsets in vec(any::<usize>(), 0..=16),
    ) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes);
        }
        prop_assert_eq!(&decode_stream([bytes.as_slice()]), &frames);
        prop_assert_eq!(&decode_stream(split_at_offsets(&bytes, &offsets)), &frames);
    }

    #[test]
    fn split_at_every_offset_decodes_same_frames(frames in vec(owned_frame(), 1..=4)) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes);
        }
        for cut in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(cut);
            prop_assert_eq!(&decode_stream([head, tail]), &frames, "cut at {}", cut);
        }
    }

    #[test]
    fn mux_chunked_input_same_events(
        streams in vec((name(), vec(any::<u8>(), 0..=3000), any::<bool>()), 1..=6),
        pings in vec(any::<u64>(), 0..=3),
        offsets in vec(any::<usize>(), 0..=24),
    ) {
        // Traffic a Server sends: each stream opened, sent data, and maybe half-closed.
        let mut bytes = Vec::new();
        for (index, (service, data, fin)) in streams.iter().enumerate() {
            let id = 2 * index as u32 + 1;
            frame::encode_frame(FrameType::Open, 0, id, service.as_bytes(), &mut bytes);
            for chunk in data.chunks(DEFAULT_MAX_PAYLOAD as usize) {
                frame::encode_frame(FrameType::Data, 0, id, chunk, &mut bytes);
            }
            if *fin {
                frame::encode_frame(FrameType::Data, frame::flags::FIN, id, &[], &mut bytes);
            }
        }
        for ping in &pings {
            frame::encode_ping(0, *ping, &mut bytes);
        }

        let mut whole = Mux::new(Role::Agent, MuxConfig::default());
        whole.handle_input(&bytes).unwrap();
        let whole_events: Vec<Event> = std::iter::from_fn(|| whole.poll_event()).collect();

        let mut chunked = Mux::new(Role::Agent, MuxConfig::default());
        for chunk in split_at_offsets(&bytes, &offsets) {
            chunked.handle_input(chunk).unwrap();
        }
        let chunked_events: Vec<Event> = std::iter::from_fn(|| chunked.poll_event()).collect();

        prop_assert_eq!(whole_events.len(), 2 * streams.len() - empty_streams(&streams));
        prop_assert_eq!(chunked_events, whole_events);
        prop_assert_eq!(chunked.outbox(), whole.outbox());
    }
}

/// Counts the streams that get no Readable event, because they carry neither data nor FIN.
fn empty_streams(streams: &[(String, Vec<u8>, bool)]) -> usize {
    streams
        .iter()
        .filter(|(_, data, fin)| data.is_empty() && !fin)
        .count()
}

proptest! {
    // Each case generates about a thousand names, so fewer cases.
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn welcome_round_trip_near_max_services(
        welcome in welcome(MAX_SERVICES - 8..=MAX_SERVICES),
    ) {
        let mut bytes = Vec::new();
        welcome.encode(&mut bytes);
        prop_assert!(bytes.len() - HEADER_LEN <= MAX_HANDSHAKE_PAYLOAD as usize);
        prop_assert_eq!(Welcome::decode(&decode_one(&bytes)), Ok(welcome));
    }
}
