//! Frame layout of protocol version 1: the 9-byte header, frame types, flags, reason codes
//! and the fixed-size control payloads.
//!
//! Every frame is a 9-byte header followed by `len` payload bytes:
//!
//! ```text
//! byte   0      1      2      3      4      5      6      7      8      9 ...
//!      +------+------+------+------+------+------+------+------+------+------------
//!      |  Length (24 bits)  | Type |Flags |R   Stream Id (31 bits)    | Payload
//!      +------+------+------+------+------+------+------+------+------+------------
//! ```
//!
//! All integers are big-endian. `R` is reserved and must be 0. The functions here only
//! encode and decode, so they run on whichever thread owns the session.

use std::fmt;

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 9;

/// Default maximum payload of one frame, in bytes.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 * 1024;

/// Largest payload length the 24-bit length field can carry.
pub const MAX_PAYLOAD_LIMIT: u32 = (1 << 24) - 1;

/// Largest stream id: the high bit of the 32-bit field is reserved.
pub const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// Reserved high bit of the stream id field.
const RESERVED_BIT: u32 = 1 << 31;

/// Frame type, the header's type byte.
///
/// Values not listed are unassigned in version 1. The five handshake types (0x10 to 0x14)
/// appear only on stream 0 before the multiplexer starts.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// Stream bytes. The FIN flag half-closes the sender's direction.
    Data = 0x0,
    /// Opens a stream. The payload is the service name.
    Open = 0x1,
    /// Aborts a stream in both directions. The payload is a u32 [`ResetReason`].
    Reset = 0x3,
    /// Grants send credit. The payload is a u32 increment; stream 0 means the session.
    WindowUpdate = 0x4,
    /// Liveness probe with an 8-byte payload. The ACK flag marks the reply (pong).
    Ping = 0x5,
    /// Announces that the sender accepts no new streams.
    GoAway = 0x6,
    /// First handshake message, Agent to Server.
    Hello = 0x10,
    /// Server nonce for the Agent to sign.
    Challenge = 0x11,
    /// Agent signature over the challenge.
    Auth = 0x12,
    /// Server acceptance, after which the multiplexer starts.
    Welcome = 0x13,
    /// Server refusal with a reason code, after which the Server closes the connection.
    Reject = 0x14,
}

impl FrameType {
    /// Converts a type byte, returning `None` for unassigned values.
    pub fn from_u8(value: u8) -> Option<Self> {
        let kind = match value {
            0x0 => Self::Data,
            0x1 => Self::Open,
            0x3 => Self::Reset,
            0x4 => Self::WindowUpdate,
            0x5 => Self::Ping,
            0x6 => Self::GoAway,
            0x10 => Self::Hello,
            0x11 => Self::Challenge,
            0x12 => Self::Auth,
            0x13 => Self::Welcome,
            0x14 => Self::Reject,
            _ => return None,
        };
        Some(kind)
    }

    /// Returns the type byte.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// Returns true for the five types that belong to the handshake.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            Self::Hello | Self::Challenge | Self::Auth | Self::Welcome | Self::Reject
        )
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Frame flags. A flag is defined only for the type named here, and receivers ignore
/// flags that are not defined for a frame's type.
pub mod flags {
    /// On Data: the sender will send no more data on this stream.
    pub const FIN: u8 = 0x1;
    /// On Ping: this frame is the reply to a Ping and carries its payload back.
    pub const ACK: u8 = 0x1;
}

/// Decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type.
    pub kind: FrameType,
    /// Flag bits, see [`flags`].
    pub flags: u8,
    /// Stream id, 0 for session-level frames. The reserved bit is always clear.
    pub stream_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

/// Decoded frame that borrows its payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Frame header.
    pub header: FrameHeader,
    /// Payload, exactly `header.len` bytes.
    pub payload: &'a [u8],
}

/// Appends the 9-byte encoding of `header` to `out`.
///
/// # Panics
///
/// If `header.len` exceeds [`MAX_PAYLOAD_LIMIT`] or `header.stream_id` has the reserved
/// bit set. Both are caller bugs, because no valid frame has them.
pub fn encode_header(header: &FrameHeader, out: &mut Vec<u8>) {
    assert!(
        header.len <= MAX_PAYLOAD_LIMIT,
        "frame payload of {} bytes exceeds the 24-bit length field",
        header.len
    );
    assert!(
        header.stream_id & RESERVED_BIT == 0,
        "stream id {:#x} has the reserved bit set",
        header.stream_id
    );

    let len = header.len.to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(header.kind.to_u8());
    out.push(header.flags);
    out.extend_from_slice(&header.stream_id.to_be_bytes());
}

/// Appends a whole frame (header and payload) to `out`.
///
/// # Panics
///
/// As [`encode_header`]: if the payload is longer than [`MAX_PAYLOAD_LIMIT`] or the stream
/// id has the reserved bit set.
pub fn encode_frame(kind: FrameType, flags: u8, stream_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let header = FrameHeader {
        kind,
        flags,
        stream_id,
        len,
    };
    encode_header(&header, out);
    out.extend_from_slice(payload);
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet contain the whole frame, and otherwise the
/// frame and the number of bytes it occupies. The header is checked as soon as its 9 bytes
/// are present, so an oversized or unknown frame fails before its payload arrives. The
/// payload itself is not interpreted here.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = decode_header(header_bytes, max_payload)?;

    // `len` is below 2^24, so the sum cannot overflow.
    let total = HEADER_LEN + header.len as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((Frame { header, payload }, total)))
}

/// Decodes and checks a frame header.
///
/// Fails if the reserved bit is set, the type is unassigned, or the payload length exceeds
/// `max_payload`.
pub fn decode_header(
    bytes: &[u8; HEADER_LEN],
    max_payload: u32,
) -> Result<FrameHeader, FrameError> {
    let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
    let type_byte = bytes[3];
    let flags = bytes[4];
    let stream_id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);

    if stream_id & RESERVED_BIT != 0 {
        return Err(FrameError::ReservedBit { raw: stream_id });
    }
    let Some(kind) = FrameType::from_u8(type_byte) else {
        return Err(FrameError::UnknownType {
            kind: type_byte,
            stream_id,
        });
    };
    if len > max_payload {
        return Err(FrameError::Oversized {
            kind,
            stream_id,
            len,
            max: max_payload,
        });
    }

    Ok(FrameHeader {
        kind,
        flags,
        stream_id,
        len,
    })
}

/// Appends a Reset frame for `stream_id`.
pub fn encode_reset(stream_id: u32, reason: ResetReason, out: &mut Vec<u8>) {
    encode_frame(
        FrameType::Reset,
        0,
        stream_id,
        &reason.to_u32().to_be_bytes(),
        out,
    );
}

/// Appends a WindowUpdate frame. Stream 0 grants session credit.
pub fn encode_window_update(stream_id: u32, increment: u32, out: &mut Vec<u8>) {
    encode_frame(
        FrameType::WindowUpdate,
        0,
        stream_id,
        &increment.to_be_bytes(),
        out,
    );
}

/// Appends a Ping frame on stream 0. `flags` is 0 for a ping and [`flags::ACK`] for a pong.
pub fn encode_ping(flags: u8, payload: u64, out: &mut Vec<u8>) {
    encode_frame(FrameType::Ping, flags, 0, &payload.to_be_bytes(), out);
}

/// Appends a GoAway frame on stream 0.
pub fn encode_go_away(last_stream_id: u32, reason: GoAwayReason, out: &mut Vec<u8>) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last_stream_id.to_be_bytes());
    payload[4..].copy_from_slice(&reason.to_u32().to_be_bytes());
    encode_frame(FrameType::GoAway, 0, 0, &payload, out);
}

/// Parses the reason code of a Reset frame.
pub fn parse_reset(frame: &Frame<'_>) -> Result<ResetReason, FrameError> {
    let payload = fixed_payload::<4>(frame)?;
    Ok(ResetReason::from_u32(u32::from_be_bytes(payload)))
}

/// Parses the increment of a WindowUpdate frame. A zero increment is returned as is.
pub fn parse_window_update(frame: &Frame<'_>) -> Result<u32, FrameError> {
    let payload = fixed_payload::<4>(frame)?;
    Ok(u32::from_be_bytes(payload))
}

/// Parses the 8-byte payload of a Ping frame.
pub fn parse_ping(frame: &Frame<'_>) -> Result<u64, FrameError> {
    let payload = fixed_payload::<8>(frame)?;
    Ok(u64::from_be_bytes(payload))
}

/// Parses a GoAway frame into its last stream id and reason.
pub fn parse_go_away(frame: &Frame<'_>) -> Result<(u32, GoAwayReason), FrameError> {
    let payload = fixed_payload::<8>(frame)?;
    let last_stream_id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let reason = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    if last_stream_id & RESERVED_BIT != 0 {
        return Err(FrameError::ReservedBit {
            raw: last_stream_id,
        });
    }
    Ok((last_stream_id, GoAwayReason::from_u32(reason)))
}

/// Returns the payload as an array if it has exactly `N` bytes.
fn fixed_payload<const N: usize>(frame: &Frame<'_>) -> Result<[u8; N], FrameError> {
    <[u8; N]>::try_from(frame.payload).map_err(|_| FrameError::PayloadLength {
        kind: frame.header.kind,
        stream_id: frame.header.stream_id,
        len: frame.payload.len(),
        expected: N,
    })
}

/// Reason code carried by a Reset frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The application closed the stream early.
    Cancelled,
    /// The Agent has no service of the requested name.
    UnknownService,
    /// The private service refused the TCP connection.
    ConnectRefused,
    /// The TCP connection to the private service timed out.
    ConnectTimeout,
    /// The connection to the private service failed after it was established.
    TargetError,
    /// The peer broke a stream-level protocol rule, such as data after FIN.
    ProtocolError,
    /// The peer sent more data than the stream window allowed.
    FlowControl,
    /// The session is closing, so the stream was not or will not be served.
    SessionClosing,
    /// The receiver already had its maximum number of open streams.
    TooManyStreams,
    /// A code this version does not define, kept as received.
    Other(u32),
}

impl ResetReason {
    /// Returns the wire code.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::Cancelled => 0,
            Self::UnknownService => 1,
            Self::ConnectRefused => 2,
            Self::ConnectTimeout => 3,
            Self::TargetError => 4,
            Self::ProtocolError => 5,
            Self::FlowControl => 6,
            Self::SessionClosing => 7,
            Self::TooManyStreams => 8,
            Self::Other(code) => code,
        }
    }

    /// Converts a wire code. Undefined codes become [`ResetReason::Other`].
    pub fn from_u32(code: u32) -> Self {
        match code {
            0 => Self::Cancelled,
            1 => Self::UnknownService,
            2 => Self::ConnectRefused,
            3 => Self::ConnectTimeout,
            4 => Self::TargetError,
            5 => Self::ProtocolError,
            6 => Self::FlowControl,
            7 => Self::SessionClosing,
            8 => Self::TooManyStreams,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Cancelled => "cancelled by the peer application",
            Self::UnknownService => "the Agent has no service of that name",
            Self::ConnectRefused => "the private service refused the connection",
            Self::ConnectTimeout => "the connection to the private service timed out",
            Self::TargetError => "the connection to the private service failed",
            Self::ProtocolError => "stream protocol error",
            Self::FlowControl => "the stream window was exceeded",
            Self::SessionClosing => "the session is closing",
            Self::TooManyStreams => "the receiver has too many open streams",
            Self::Other(code) => return write!(f, "unknown reset reason code {code}"),
        };
        f.write_str(text)
    }
}

/// Reason code carried by a Reject handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The Server does not speak the protocol version in the Hello.
    UnsupportedVersion,
    /// The Server has no gateway with the id in the Hello.
    UnknownGateway,
    /// The Agent's source address is outside the gateway's allowed ranges.
    AddressNotAllowed,
    /// The signature did not verify with any public key of the gateway.
    BadSignature,
    /// The Agent's RSA key is smaller than the Server's minimum.
    KeyTooSmall,
    /// The Agent broke the handshake protocol.
    ProtocolError,
    /// The Server is shutting down and accepts no new sessions.
    ShuttingDown,
    /// The Agent's TLS client certificate was issued for another gateway.
    WrongCertificate,
    /// A code this version does not define, kept as received.
    Other(u16),
}

impl RejectReason {
    /// Returns the wire code.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::UnsupportedVersion => 1,
            Self::UnknownGateway => 2,
            Self::AddressNotAllowed => 3,
            Self::BadSignature => 4,
            Self::KeyTooSmall => 5,
            Self::ProtocolError => 6,
            Self::ShuttingDown => 7,
            Self::WrongCertificate => 8,
            Self::Other(code) => code,
        }
    }

    /// Converts a wire code. Undefined codes become [`RejectReason::Other`].
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::UnsupportedVersion,
            2 => Self::UnknownGateway,
            3 => Self::AddressNotAllowed,
            4 => Self::BadSignature,
            5 => Self::KeyTooSmall,
            6 => Self::ProtocolError,
            7 => Self::ShuttingDown,
            8 => Self::WrongCertificate,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::UnsupportedVersion => "the Server does not support this protocol version",
            Self::UnknownGateway => "the Server has no gateway with this id",
            Self::AddressNotAllowed => {
                "the Agent's address is not in the gateway's allowed address ranges"
            }
            Self::BadSignature => "the signature did not verify with the gateway's public keys",
            Self::KeyTooSmall => "the Agent's RSA key is smaller than the Server's minimum",
            Self::ProtocolError => "handshake protocol error",
            Self::ShuttingDown => "the Server is shutting down",
            Self::WrongCertificate => "the TLS client certificate was issued for another gateway",
            Self::Other(code) => return write!(f, "unknown reject reason code {code}"),
        };
        f.write_str(text)
    }
}

/// Reason code carried by a GoAway frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAwayReason {
    /// Orderly shutdown of the sender.
    Shutdown,
    /// The peer broke a session-level protocol rule.
    ProtocolError,
    /// Nothing was received from the peer within the heartbeat timeout.
    HeartbeatTimeout,
    /// A newer session of the same Agent replaced this one.
    Replaced,
    /// A code this version does not define, kept as received.
    Other(u32),
}

impl GoAwayReason {
    /// Returns the wire code.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::Shutdown => 0,
            Self::ProtocolError => 1,
            Self::HeartbeatTimeout => 2,
            Self::Replaced => 3,
            Self::Other(code) => code,
        }
    }

    /// Converts a wire code. Undefined codes become [`GoAwayReason::Other`].
    pub fn from_u32(code: u32) -> Self {
        match code {
            0 => Self::Shutdown,
            1 => Self::ProtocolError,
            2 => Self::HeartbeatTimeout,
            3 => Self::Replaced,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for GoAwayReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Shutdown => "the peer is shutting down",
            Self::ProtocolError => "session protocol error",
            Self::HeartbeatTimeout => "the heartbeat timed out",
            Self::Replaced => "a newer session of the same Agent replaced this one",
            Self::Other(code) => return write!(f, "unknown go-away reason code {code}"),
        };
        f.write_str(text)
    }
}

/// Error decoding a frame. Every variant is fatal for the session that received it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The type byte is not assigned in protocol version 1.
    #[error("unknown frame type {kind:#04x} on stream {stream_id}")]
    UnknownType {
        /// Received type byte.
        kind: u8,
        /// Stream id from the same header.
        stream_id: u32,
    },

    /// The payload length exceeds the receiver's maximum.
    #[error("{kind} frame on stream {stream_id} has a payload of {len} bytes, above the maximum of {max} bytes")]
    Oversized {
        /// Frame type.
        kind: FrameType,
        /// Stream id.
        stream_id: u32,
        /// Announced payload length.
        len: u32,
        /// Receiver's maximum payload length.
        max: u32,
    },

    /// The reserved high bit of a stream id is set.
    #[error("stream id field {raw:#010x} has the reserved high bit set")]
    ReservedBit {
        /// Raw 32-bit field as received.
        raw: u32,
    },

    /// A control frame's payload does not have the fixed size its type requires.
    #[error(
        "{kind} frame on stream {stream_id} has a payload of {len} bytes, expected {expected}"
    )]
    PayloadLength {
        /// Frame type.
        kind: FrameType,
        /// Stream id.
        stream_id: u32,
        /// Received payload length.
        len: usize,
        /// Required payload length.
        expected: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn encoded(kind: FrameType, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(kind, flags, stream_id, payload, &mut out);
        out
    }

    #[test]
    fn header_layout_is_big_endian() {
        let bytes = encoded(FrameType::WindowUpdate, 0xa5, 0x0102_0304, &[9; 0x0a0b]);
        assert_eq!(
            &bytes[..HEADER_LEN],
            &[0x00, 0x0a, 0x0b, 0x04, 0xa5, 0x01, 0x02, 0x03, 0x04]
        );
        assert_eq!(bytes.len(), HEADER_LEN + 0x0a0b);
    }

    #[test]
    fn frame_round_trip_every_type() {
        for kind in ALL_TYPES {
            let bytes = encoded(kind, 0x1, 77, b"payload");
            let (frame, used) = decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame.header.kind, kind);
            assert_eq!(frame.header.flags, 0x1);
            assert_eq!(frame.header.stream_id, 77);
            assert_eq!(frame.header.len, 7);
            assert_eq!(frame.payload, b"payload");
        }
    }

    #[test]
    fn type_byte_round_trip() {
        for kind in ALL_TYPES {
            assert_eq!(FrameType::from_u8(kind.to_u8()), Some(kind));
        }
        for value in [0x2, 0x7, 0xf, 0x15, 0xff] {
            assert_eq!(FrameType::from_u8(value), None);
        }
    }

    #[test]
    fn decode_leaves_following_bytes() {
        let mut bytes = encoded(FrameType::Data, 0, 3, b"abc");
        let first_len = bytes.len();
        bytes.extend_from_slice(&encoded(FrameType::Data, flags::FIN, 3, b""));

        let (first, used) = decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(used, first_len);
        assert_eq!(first.payload, b"abc");

        let (second, used) = decode(&bytes[first_len..], DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .unwrap();
        assert_eq!(used, HEADER_LEN);
        assert_eq!(second.header.flags, flags::FIN);
        assert!(second.payload.is_empty());
    }

    #[test]
    fn decode_truncated_returns_none() {
        let bytes = encoded(FrameType::Data, 0, 1, b"hello");
        for end in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..end], DEFAULT_MAX_PAYLOAD),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn decode_rejects_oversized_from_header() {
        let bytes = encoded(FrameType::Data, 0, 5, &[0; 101]);
        let error = decode(&bytes[..HEADER_LEN], 100).unwrap_err();
        assert_eq!(
            error,
            FrameError::Oversized {
                kind: FrameType::Data,
                stream_id: 5,
                len: 101,
                max: 100
            }
        );
        assert!(decode(&bytes, 101).unwrap().is_some());
    }

    #[test]
    fn decode_rejects_unknown_type() {
        let bytes = [0, 0, 0, 0x7, 0, 0, 0, 0, 9];
        assert_eq!(
            decode(&bytes, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::UnknownType {
                kind: 7,
                stream_id: 9
            })
        );
    }

    #[test]
    fn decode_rejects_reserved_bit() {
        let bytes = [0, 0, 0, 0x0, 0, 0x80, 0, 0, 1];
        assert_eq!(
            decode(&bytes, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::ReservedBit { raw: 0x8000_0001 })
        );
    }

    #[test]
    #[should_panic(expected = "reserved bit")]
    fn encode_rejects_reserved_bit() {
        encoded(FrameType::Data, 0, RESERVED_BIT | 1, b"");
    }

    #[test]
    fn decode_survives_arbitrary_bytes() {
        // A fixed pseudo-random sequence, so a failure reproduces.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.clear();
            let len = (state % 40) as usize;
            buf.extend((0..len).map(|i| (state >> (i % 8 * 8)) as u8));
            if let Ok(Some((frame, used))) = decode(&buf, 16) {
                assert!(used <= buf.len());
                assert_eq!(frame.payload.len(), frame.header.len as usize);
            }
        }
    }

    #[test]
    fn control_payload_round_trip() {
        let mut out = Vec::new();
        encode_reset(7, ResetReason::ConnectTimeout, &mut out);
        let (frame, _) = decode(&out, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(frame.header.kind, FrameType::Reset);
        assert_eq!(parse_reset(&frame), Ok(ResetReason::ConnectTimeout));

        out.clear();
        encode_window_update(0, 65_536, &mut out);
        let (frame, _) = decode(&out, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(frame.header.stream_id, 0);
        assert_eq!(parse_window_update(&frame), Ok(65_536));

        out.clear();
        encode_ping(flags::ACK, 0x0102_0304_0506_0708, &mut out);
        let (frame, _) = decode(&out, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(frame.header.flags, flags::ACK);
        assert_eq!(parse_ping(&frame), Ok(0x0102_0304_0506_0708));

        out.clear();
        encode_go_away(41, GoAwayReason::Replaced, &mut out);
        let (frame, _) = decode(&out, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(parse_go_away(&frame), Ok((41, GoAwayReason::Replaced)));
    }

    #[test]
    fn control_payload_wrong_length() {
        let bytes = encoded(FrameType::Ping, 0, 0, &[0; 7]);
        let (frame, _) = decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(
            parse_ping(&frame),
            Err(FrameError::PayloadLength {
                kind: FrameType::Ping,
                stream_id: 0,
                len: 7,
                expected: 8
            })
        );

        let bytes = encoded(FrameType::Reset, 0, 3, &[0; 5]);
        let (frame, _) = decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert!(matches!(
            parse_reset(&frame),
            Err(FrameError::PayloadLength {
                len: 5,
                expected: 4,
                ..
            })
        ));
    }

    #[test]
    fn reason_codes_round_trip() {
        for code in 0..12 {
            assert_eq!(ResetReason::from_u32(code).to_u32(), code);
            assert_eq!(GoAwayReason::from_u32(code).to_u32(), code);
            assert_eq!(RejectReason::from_u16(code as u16).to_u16(), code as u16);
        }
        assert_eq!(ResetReason::from_u32(6), ResetReason::FlowControl);
        assert_eq!(ResetReason::from_u32(99), ResetReason::Other(99));
        assert_eq!(RejectReason::from_u16(4), RejectReason::BadSignature);
        assert_eq!(RejectReason::from_u16(0), RejectReason::Other(0));
        assert_eq!(GoAwayReason::from_u32(2), GoAwayReason::HeartbeatTimeout);
        assert_eq!(
            GoAwayReason::from_u32(u32::MAX),
            GoAwayReason::Other(u32::MAX)
        );
    }

    #[test]
    fn reason_display_names_unknown_code() {
        assert_eq!(
            ResetReason::Other(42).to_string(),
            "unknown reset reason code 42"
        );
        assert_eq!(
            RejectReason::Other(9).to_string(),
            "unknown reject reason code 9"
        );
        assert_eq!(
            GoAwayReason::Shutdown.to_string(),
            "the peer is shutting down"
        );
    }

    #[test]
    fn error_messages_name_numbers() {
        let error = FrameError::Oversized {
            kind: FrameType::Data,
            stream_id: 3,
            len: 20_000,
            max: 16_384,
        };
        assert_eq!(
            error.to_string(),
            "Data frame on stream 3 has a payload of 20000 bytes, above the maximum of 16384 bytes"
        );
        let error = FrameError::UnknownType {
            kind: 7,
            stream_id: 1,
        };
        assert_eq!(error.to_string(), "unknown frame type 0x07 on stream 1");
    }
}
