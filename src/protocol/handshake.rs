//! Handshake messages, exchanged on stream 0 inside TLS before the multiplexer starts.
//!
//! The Agent sends Hello, the Server replies with Challenge, the Agent replies with Auth,
//! and the Server ends the handshake with Welcome or Reject. Each message is one frame whose type
//! names the message. This module only encodes and decodes, so it runs on whichever thread
//! owns the connection. Which key signs, and how the signature is checked, belongs to the
//! caller.

use std::str;

use super::frame::{self, Frame, FrameError, FrameType, RejectReason};
use super::PROTOCOL_VERSION;

/// Context string at the start of every signed message, so that the signature cannot be
/// reused for another purpose of the same key.
pub const AUTH_CONTEXT: &[u8] = b"ipaas-gateway/1 agent-auth\0";

/// Label for the TLS keying material exporter whose output is signed.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ipaas-gateway-auth";

/// Length of the exporter output in bytes.
pub const EXPORTER_LEN: usize = 32;

/// Length of the challenge nonce in bytes.
pub const NONCE_LEN: usize = 32;

/// Maximum length of a gateway id, agent name or service name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Maximum length of an Auth signature in bytes, enough for an 8192-bit RSA key.
pub const MAX_SIGNATURE_LEN: usize = 1024;

/// Maximum number of services in a Welcome.
pub const MAX_SERVICES: usize = 1024;

/// Maximum length of a Reject message in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Maximum payload of a handshake frame, to pass to [`frame::decode`] during the handshake.
///
/// It is the size of the largest valid message: a Welcome with [`MAX_SERVICES`] names of
/// [`MAX_NAME_LEN`] bytes needs 132,114 bytes.
pub const MAX_HANDSHAKE_PAYLOAD: u32 = 132 * 1024;

/// Payload size of the largest valid Welcome.
const MAX_WELCOME_PAYLOAD: usize = 8 + 4 + 4 + 2 + MAX_SERVICES * (1 + MAX_NAME_LEN);

const _: () = assert!(MAX_WELCOME_PAYLOAD <= MAX_HANDSHAKE_PAYLOAD as usize);

/// First message, Agent to Server: who the Agent is and which protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the Agent.
    pub version: u16,
    /// Gateway id from the Agent's config, a name as checked by [`validate_name`].
    pub gateway_id: String,
    /// Agent name from the Agent's config, a name as checked by [`validate_name`].
    pub agent_name: String,
    /// Random id of the Agent process, the same on every reconnect of that process.
    pub instance_id: [u8; 16],
}

impl Hello {
    /// Appends the Hello frame to `out`.
    ///
    /// Payload: version u16, u8 length and gateway id, u8 length and agent name, then the
    /// 16-byte instance id.
    ///
    /// # Panics
    ///
    /// If the gateway id or agent name is longer than 255 bytes. Names that pass
    /// [`validate_name`] never are.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(2 + 2 + 2 * MAX_NAME_LEN + 16);
        payload.extend_from_slice(&self.version.to_be_bytes());
        put_short_string(&mut payload, "gateway id", &self.gateway_id);
        put_short_string(&mut payload, "agent name", &self.agent_name);
        payload.extend_from_slice(&self.instance_id);
        frame::encode_frame(FrameType::Hello, 0, 0, &payload, out);
    }

    /// Decodes a Hello frame and checks both names.
    ///
    /// A Hello of another version still decodes if it starts with the version 1 fields,
    /// and bytes after them are then ignored, so the Server can read the ids and reply
    /// with [`RejectReason::UnsupportedVersion`]. If such a Hello does not start with the
    /// version 1 fields, decoding fails with [`HandshakeError::UnsupportedVersion`].
    pub fn decode(frame: &Frame<'_>) -> Result<Self, HandshakeError> {
        let mut reader = Reader::new(frame, FrameType::Hello)?;
        let version = reader.u16("version")?;
        let fields = Self::decode_fields(version, &mut reader);

        if version == PROTOCOL_VERSION {
            let hello = fields?;
            reader.finish()?;
            return Ok(hello);
        }
        fields.map_err(|_| HandshakeError::UnsupportedVersion {
            version,
            supported: PROTOCOL_VERSION,
        })
    }

    /// Reads the fields after the version.
    fn decode_fields(version: u16, reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        let gateway_id = reader.name("gateway id")?;
        let agent_name = reader.name("agent name")?;
        let instance_id = reader.array::<16>("instance id")?;
        Ok(Self {
            version,
            gateway_id,
            agent_name,
            instance_id,
        })
    }
}

/// Second message, Server to Agent: a fresh random nonce for the Agent to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Random bytes, new for every connection.
    pub nonce: [u8; NONCE_LEN],
}

impl Challenge {
    /// Appends the Challenge frame to `out`. The payload is the 32-byte nonce.
    pub fn encode(&self, out: &mut Vec<u8>) {
        frame::encode_frame(FrameType::Challenge, 0, 0, &self.nonce, out);
    }

    /// Decodes a Challenge frame.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, HandshakeError> {
        let mut reader = Reader::new(frame, FrameType::Challenge)?;
        let nonce = reader.array::<NONCE_LEN>("nonce")?;
        reader.finish()?;
        Ok(Self { nonce })
    }
}

/// Third message, Agent to Server: the signature over [`signed_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// RSASSA-PKCS1-v1_5 SHA-256 signature, 1 to [`MAX_SIGNATURE_LEN`] bytes.
    pub signature: Vec<u8>,
}

impl Auth {
    /// Appends the Auth frame to `out`. Payload: u16 length, then the signature.
    ///
    /// # Panics
    ///
    /// If the signature is longer than 65,535 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(2 + self.signature.len());
        put_long_bytes(&mut payload, "signature", &self.signature);
        frame::encode_frame(FrameType::Auth, 0, 0, &payload, out);
    }

    /// Decodes an Auth frame. The signature must be 1 to [`MAX_SIGNATURE_LEN`] bytes.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, HandshakeError> {
        let mut reader = Reader::new(frame, FrameType::Auth)?;
        let signature = reader
            .long_bytes("signature", 1, MAX_SIGNATURE_LEN)?
            .to_vec();
        reader.finish()?;
        Ok(Self { signature })
    }
}

/// Final message on success, Server to Agent. The multiplexer starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Server-assigned id of this session, for logs on both sides.
    pub session_id: u64,
    /// Time in ms after which a side with nothing received sends a Ping.
    pub heartbeat_interval_ms: u32,
    /// Time in ms without any received byte after which a side closes the session.
    pub heartbeat_timeout_ms: u32,
    /// Names of the services the Server routes to this gateway, at most [`MAX_SERVICES`].
    pub services: Vec<String>,
}

impl Welcome {
    /// Appends the Welcome frame to `out`.
    ///
    /// Payload: session id u64, heartbeat interval u32, heartbeat timeout u32, service count
    /// u16, then each service name with a u8 length.
    ///
    /// # Panics
    ///
    /// If there are more than 65,535 services or a service name is longer than 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let names_len: usize = self.services.iter().map(|name| 1 + name.len()).sum();
        let mut payload = Vec::with_capacity(18 + names_len);
        payload.extend_from_slice(&self.session_id.to_be_bytes());
        payload.extend_from_slice(&self.heartbeat_interval_ms.to_be_bytes());
        payload.extend_from_slice(&self.heartbeat_timeout_ms.to_be_bytes());

        let count = u16::try_from(self.services.len())
            .unwrap_or_else(|_| panic!("{} services do not fit a u16 count", self.services.len()));
        payload.extend_from_slice(&count.to_be_bytes());
        for name in &self.services {
            put_short_string(&mut payload, "service name", name);
        }
        frame::encode_frame(FrameType::Welcome, 0, 0, &payload, out);
    }

    /// Decodes a Welcome frame.
    ///
    /// The heartbeat interval must be at least 1 ms and below the timeout, there must be at
    /// most [`MAX_SERVICES`] services, and each name must pass [`validate_name`].
    pub fn decode(frame: &Frame<'_>) -> Result<Self, HandshakeError> {
        let mut reader = Reader::new(frame, FrameType::Welcome)?;

        let session_id = reader.u64("session id")?;
        let heartbeat_interval_ms = reader.u32("heartbeat interval")?;
        let heartbeat_timeout_ms = reader.u32("heartbeat timeout")?;
        if heartbeat_interval_ms == 0 || heartbeat_interval_ms >= heartbeat_timeout_ms {
            return Err(HandshakeError::InvalidHeartbeat {
                interval_ms: heartbeat_interval_ms,
                timeout_ms: heartbeat_timeout_ms,
            });
        }

        let count = usize::from(reader.u16("service count")?);
        if count > MAX_SERVICES {
            return Err(HandshakeError::LengthOutOfRange {
                field: "service count",
                len: count,
                min: 0,
                max: MAX_SERVICES,
            });
        }
        let mut services = Vec::with_capacity(count);
        for _ in 0..count {
            services.push(reader.name("service name")?);
        }
        reader.finish()?;

        Ok(Self {
            session_id,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            services,
        })
    }
}

/// Final message on failure, Server to Agent. The Server closes the connection after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Reason code.
    pub reason: RejectReason,
    /// Human-readable detail, at most [`MAX_MESSAGE_LEN`] bytes of UTF-8. It comes from the
    /// peer, so log it as a field and never interpret it.
    pub message: String,
}

impl Reject {
    /// Creates a Reject, cutting `message` to [`MAX_MESSAGE_LEN`] bytes at a character
    /// boundary.
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut end = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { reason, message }
    }

    /// Appends the Reject frame to `out`. Payload: reason u16, u16 length, then the message.
    ///
    /// # Panics
    ///
    /// If the message is longer than 65,535 bytes. [`Reject::new`] cuts it to
    /// [`MAX_MESSAGE_LEN`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(4 + self.message.len());
        payload.extend_from_slice(&self.reason.to_u16().to_be_bytes());
        put_long_bytes(&mut payload, "message", self.message.as_bytes());
        frame::encode_frame(FrameType::Reject, 0, 0, &payload, out);
    }

    /// Decodes a Reject frame. Unknown reason codes are kept as [`RejectReason::Other`].
    pub fn decode(frame: &Frame<'_>) -> Result<Self, HandshakeError> {
        let mut reader = Reader::new(frame, FrameType::Reject)?;
        let reason = RejectReason::from_u16(reader.u16("reason")?);
        let message = reader.long_bytes("message", 0, MAX_MESSAGE_LEN)?;
        let message = str::from_utf8(message)
            .map_err(|_| HandshakeError::InvalidUtf8 { field: "message" })?
            .to_owned();
        reader.finish()?;
        Ok(Self { reason, message })
    }
}

/// Checks that `value` is a valid gateway id, agent name or service name: 1 to
/// [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`.
///
/// `kind` names the value in the error, for example "gateway id".
pub fn validate_name(kind: &str, value: &str) -> Result<(), HandshakeError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(HandshakeError::NameLength {
            kind: kind.to_owned(),
            len: value.len(),
        });
    }

    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if let Some(character) = value.chars().find(|&c| !allowed(c)) {
        return Err(HandshakeError::NameCharacter {
            kind: kind.to_owned(),
            value: value.to_owned(),
            character,
        });
    }
    Ok(())
}

/// Builds the message that the Agent signs and the Server verifies.
///
/// Layout: [`AUTH_CONTEXT`], the 32-byte nonce, the 32-byte TLS exporter output, then the
/// gateway id and the agent name, each after a u8 length. The fixed-size parts and the
/// length prefixes make the encoding unambiguous.
///
/// # Panics
///
/// If the gateway id or agent name is longer than 255 bytes. Names that pass
/// [`validate_name`] never are.
pub fn signed_message(
    nonce: &[u8; NONCE_LEN],
    exporter: &[u8; EXPORTER_LEN],
    gateway_id: &str,
    agent_name: &str,
) -> Vec<u8> {
    let len =
        AUTH_CONTEXT.len() + NONCE_LEN + EXPORTER_LEN + 2 + gateway_id.len() + agent_name.len();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(AUTH_CONTEXT);
    message.extend_from_slice(nonce);
    message.extend_from_slice(exporter);
    put_short_string(&mut message, "gateway id", gateway_id);
    put_short_string(&mut message, "agent name", agent_name);
    message
}

/// Appends a u8 length and the bytes of `value`.
fn put_short_string(out: &mut Vec<u8>, field: &str, value: &str) {
    let len = u8::try_from(value.len())
        .unwrap_or_else(|_| panic!("{field} of {} bytes does not fit a u8 length", value.len()));
    out.push(len);
    out.extend_from_slice(value.as_bytes());
}

/// Appends a u16 length and `value`.
fn put_long_bytes(out: &mut Vec<u8>, field: &str, value: &[u8]) {
    let len = u16::try_from(value.len())
        .unwrap_or_else(|_| panic!("{field} of {} bytes does not fit a u16 length", value.len()));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// Cursor over a handshake payload whose errors name the message and field.
struct Reader<'a> {
    kind: FrameType,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the frame type and stream id and starts at the payload's first byte.
    fn new(frame: &Frame<'a>, expected: FrameType) -> Result<Self, HandshakeError> {
        if frame.header.kind != expected {
            return Err(HandshakeError::UnexpectedFrame {
                expected,
                found: frame.header.kind,
            });
        }
        if frame.header.stream_id != 0 {
            return Err(HandshakeError::WrongStream {
                kind: expected,
                stream_id: frame.header.stream_id,
            });
        }
        Ok(Self {
            kind: expected,
            rest: frame.payload,
        })
    }

    fn bytes(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], HandshakeError> {
        if self.rest.len() < len {
            return Err(HandshakeError::Truncated {
                kind: self.kind,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], HandshakeError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.bytes(field, N)?);
        Ok(array)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, HandshakeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, HandshakeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, HandshakeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// Reads a u8 length and that many bytes, and checks them with [`validate_name`].
    fn name(&mut self, field: &'static str) -> Result<String, HandshakeError> {
        let [len] = self.array::<1>(field)?;
        let bytes = self.bytes(field, usize::from(len))?;
        let name = str::from_utf8(bytes).map_err(|_| HandshakeError::InvalidUtf8 { field })?;
        validate_name(field, name)?;
        Ok(name.to_owned())
    }

    /// Reads a u16 length in `min..=max` and that many bytes.
    fn long_bytes(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<&'a [u8], HandshakeError> {
        let len = usize::from(self.u16(field)?);
        if len < min || len > max {
            return Err(HandshakeError::LengthOutOfRange {
                field,
                len,
                min,
                max,
            });
        }
        self.bytes(field, len)
    }

    fn finish(self) -> Result<(), HandshakeError> {
        if !self.rest.is_empty() {
            return Err(HandshakeError::TrailingBytes {
                kind: self.kind,
                extra: self.rest.len(),
            });
        }
        Ok(())
    }
}

/// Error decoding or checking a handshake message, after which the receiver ends the
/// handshake.
///
/// A Server that sends Reject before closing uses [`RejectReason::UnsupportedVersion`]
/// for [`HandshakeError::UnsupportedVersion`] and [`RejectReason::ProtocolError`] for the
/// other variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The frame header is invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),

    /// A frame of another type arrived where this message was expected.
    #[error("expected a {expected} frame, received a {found} frame")]
    UnexpectedFrame {
        /// Message the receiver was waiting for.
        expected: FrameType,
        /// Type of the frame that arrived.
        found: FrameType,
    },

    /// A handshake frame arrived on a stream other than 0.
    #[error("{kind} must be sent on stream 0, but arrived on stream {stream_id}")]
    WrongStream {
        /// Message type.
        kind: FrameType,
        /// Stream id of the frame.
        stream_id: u32,
    },

    /// A Hello of another protocol version does not start with the version 1 fields.
    #[error(
        "Hello uses protocol version {version}, but this build supports only version {supported}"
    )]
    UnsupportedVersion {
        /// Version in the Hello.
        version: u16,
        /// Version this build speaks.
        supported: u16,
    },

    /// The payload ends before a field is complete.
    #[error("{kind} payload ends inside the {field} field")]
    Truncated {
        /// Message type.
        kind: FrameType,
        /// Field that is incomplete.
        field: &'static str,
    },

    /// Bytes remain after the last field.
    #[error("{kind} payload has {extra} bytes after its last field")]
    TrailingBytes {
        /// Message type.
        kind: FrameType,
        /// Number of extra bytes.
        extra: usize,
    },

    /// A text field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Field that failed.
        field: &'static str,
    },

    /// A name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("{kind} must be 1 to 128 bytes long, but is {len} bytes")]
    NameLength {
        /// Kind of name, for example "gateway id".
        kind: String,
        /// Length in bytes.
        len: usize,
    },

    /// A name contains a character outside `[A-Za-z0-9._-]`.
    #[error("{kind} {value:?} contains {character:?}, but only ASCII letters, digits, '.', '_' and '-' are allowed")]
    NameCharacter {
        /// Kind of name, for example "agent name".
        kind: String,
        /// The rejected name.
        value: String,
        /// First character that is not allowed.
        character: char,
    },

    /// A length-prefixed field or count is outside its allowed range.
    #[error("{field} length is {len}, but must be between {min} and {max}")]
    LengthOutOfRange {
        /// Field that failed.
        field: &'static str,
        /// Length or count received.
        len: usize,
        /// Minimum allowed.
        min: usize,
        /// Maximum allowed.
        max: usize,
    },

    /// The Welcome's heartbeat settings cannot work.
    #[error("heartbeat interval {interval_ms} ms must be at least 1 ms and below the heartbeat timeout {timeout_ms} ms")]
    InvalidHeartbeat {
        /// Interval in the Welcome.
        interval_ms: u32,
        /// Timeout in the Welcome.
        timeout_ms: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_frame(bytes: &[u8]) -> Frame<'_> {
        let (frame, used) = frame::decode(bytes, MAX_HANDSHAKE_PAYLOAD)
            .unwrap()
            .unwrap();
        assert_eq!(used, bytes.len(), "encoder wrote exactly one frame");
        frame
    }

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            gateway_id: "gw-eu.1".to_owned(),
            agent_name: "agent_A".to_owned(),
            instance_id: *b"0123456789abcdef",
        }
    }

    fn welcome() -> Welcome {
        Welcome {
            session_id: 0x0102_0304_0506_0708,
            heartbeat_interval_ms: 10_000,
            heartbeat_timeout_ms: 30_000,
            services: vec!["postgres".to_owned(), "erp.http".to_owned()],
        }
    }

    /// Builds a frame of `kind` with an arbitrary payload.
    fn with_payload(kind: FrameType, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_frame(kind, 0, stream_id, payload, &mut out);
        out
    }

    #[test]
    fn hello_round_trip() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        assert_eq!(Hello::decode(&decode_frame(&out)), Ok(hello()));
    }

    #[test]
    fn hello_payload_layout() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        let payload = &out[frame::HEADER_LEN..];
        assert_eq!(&payload[..2], &[0, 1]);
        assert_eq!(payload[2], 7);
        assert_eq!(&payload[3..10], b"gw-eu.1");
        assert_eq!(payload[10], 7);
        assert_eq!(&payload[11..18], b"agent_A");
        assert_eq!(&payload[18..], b"0123456789abcdef");
    }

    #[test]
    fn challenge_round_trip() {
        let challenge = Challenge {
            nonce: [0xab; NONCE_LEN],
        };
        let mut out = Vec::new();
        challenge.encode(&mut out);
        assert_eq!(out.len(), frame::HEADER_LEN + NONCE_LEN);
        assert_eq!(Challenge::decode(&decode_frame(&out)), Ok(challenge));
    }

    #[test]
    fn auth_round_trip() {
        let auth = Auth {
            signature: (0..=255).cycle().take(MAX_SIGNATURE_LEN).collect(),
        };
        let mut out = Vec::new();
        auth.encode(&mut out);
        assert_eq!(Auth::decode(&decode_frame(&out)), Ok(auth));
    }

    #[test]
    fn welcome_round_trip() {
        let mut out = Vec::new();
        welcome().encode(&mut out);
        assert_eq!(Welcome::decode(&decode_frame(&out)), Ok(welcome()));
    }

    #[test]
    fn largest_welcome_fits_limit() {
        let name = "s".repeat(MAX_NAME_LEN);
        let welcome = Welcome {
            services: vec![name; MAX_SERVICES],
            ..welcome()
        };
        let mut out = Vec::new();
        welcome.encode(&mut out);
        assert_eq!(out.len() - frame::HEADER_LEN, MAX_WELCOME_PAYLOAD);
        assert_eq!(Welcome::decode(&decode_frame(&out)), Ok(welcome));
    }

    #[test]
    fn reject_round_trip() {
        let reject = Reject::new(
            RejectReason::AddressNotAllowed,
            "198.51.100.7 is not allowed",
        );
        let mut out = Vec::new();
        reject.encode(&mut out);
        assert_eq!(Reject::decode(&decode_frame(&out)), Ok(reject));

        let unknown = Reject::new(RejectReason::Other(300), "");
        out.clear();
        unknown.encode(&mut out);
        assert_eq!(Reject::decode(&decode_frame(&out)), Ok(unknown));
    }

    #[test]
    fn reject_new_cuts_at_char_boundary() {
        let reject = Reject::new(RejectReason::ProtocolError, "é".repeat(600));
        assert_eq!(reject.message.len(), MAX_MESSAGE_LEN);
        let reject = Reject::new(RejectReason::ProtocolError, format!("x{}", "é".repeat(600)));
        assert_eq!(reject.message.len(), MAX_MESSAGE_LEN - 1);
    }

    #[test]
    fn decode_rejects_wrong_frame_type() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        assert_eq!(
            Welcome::decode(&decode_frame(&out)),
            Err(HandshakeError::UnexpectedFrame {
                expected: FrameType::Welcome,
                found: FrameType::Hello
            })
        );
    }

    #[test]
    fn decode_rejects_wrong_stream() {
        let bytes = with_payload(FrameType::Challenge, 1, &[0; NONCE_LEN]);
        assert_eq!(
            Challenge::decode(&decode_frame(&bytes)),
            Err(HandshakeError::WrongStream {
                kind: FrameType::Challenge,
                stream_id: 1
            })
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        let mut payload = out[frame::HEADER_LEN..].to_vec();
        payload.push(0);
        let bytes = with_payload(FrameType::Hello, 0, &payload);
        assert_eq!(
            Hello::decode(&decode_frame(&bytes)),
            Err(HandshakeError::TrailingBytes {
                kind: FrameType::Hello,
                extra: 1
            })
        );

        let bytes = with_payload(FrameType::Challenge, 0, &[0; NONCE_LEN + 3]);
        assert_eq!(
            Challenge::decode(&decode_frame(&bytes)),
            Err(HandshakeError::TrailingBytes {
                kind: FrameType::Challenge,
                extra: 3
            })
        );
    }

    #[test]
    fn decode_rejects_every_truncation() {
        let mut out = Vec::new();
        welcome().encode(&mut out);
        let payload = &out[frame::HEADER_LEN..];
        for end in 0..payload.len() {
            let bytes = with_payload(FrameType::Welcome, 0, &payload[..end]);
            let result = Welcome::decode(&decode_frame(&bytes));
            assert!(
                matches!(
                    result,
                    Err(HandshakeError::Truncated {
                        kind: FrameType::Welcome,
                        ..
                    })
                ),
                "prefix of {end} bytes: {result:?}"
            );
        }
    }

    #[test]
    fn hello_rejects_bad_utf8() {
        let mut payload = vec![0, 1, 2, 0xc3, 0x28, 1, b'a'];
        payload.extend_from_slice(&[0; 16]);
        let bytes = with_payload(FrameType::Hello, 0, &payload);
        assert_eq!(
            Hello::decode(&decode_frame(&bytes)),
            Err(HandshakeError::InvalidUtf8 {
                field: "gateway id"
            })
        );
    }

    #[test]
    fn hello_rejects_long_name() {
        let mut payload = vec![0, 1, 1, b'g', 129];
        payload.extend_from_slice(&[b'a'; 129]);
        payload.extend_from_slice(&[0; 16]);
        let bytes = with_payload(FrameType::Hello, 0, &payload);
        assert_eq!(
            Hello::decode(&decode_frame(&bytes)),
            Err(HandshakeError::NameLength {
                kind: "agent name".to_owned(),
                len: 129
            })
        );
    }

    #[test]
    fn hello_other_version_decodes_prefix() {
        let mut out = Vec::new();
        Hello {
            version: 2,
            ..hello()
        }
        .encode(&mut out);
        let mut payload = out[frame::HEADER_LEN..].to_vec();
        payload.extend_from_slice(b"fields of version 2");
        let bytes = with_payload(FrameType::Hello, 0, &payload);

        let decoded = Hello::decode(&decode_frame(&bytes)).unwrap();
        assert_eq!(decoded.version, 2);
        assert_eq!(decoded.gateway_id, "gw-eu.1");
        assert_eq!(decoded.agent_name, "agent_A");
    }

    #[test]
    fn hello_other_version_unreadable() {
        let bytes = with_payload(FrameType::Hello, 0, &[0, 9, 0xff, 0xff]);
        assert_eq!(
            Hello::decode(&decode_frame(&bytes)),
            Err(HandshakeError::UnsupportedVersion {
                version: 9,
                supported: 1
            })
        );
    }

    #[test]
    fn auth_rejects_bad_lengths() {
        let bytes = with_payload(FrameType::Auth, 0, &[0, 0]);
        assert_eq!(
            Auth::decode(&decode_frame(&bytes)),
            Err(HandshakeError::LengthOutOfRange {
                field: "signature",
                len: 0,
                min: 1,
                max: MAX_SIGNATURE_LEN
            })
        );

        let mut payload = 1025u16.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0; 1025]);
        let bytes = with_payload(FrameType::Auth, 0, &payload);
        assert!(matches!(
            Auth::decode(&decode_frame(&bytes)),
            Err(HandshakeError::LengthOutOfRange { len: 1025, .. })
        ));
    }

    #[test]
    fn welcome_rejects_bad_heartbeat() {
        for (interval, timeout) in [(0, 1000), (1000, 1000), (2000, 1000)] {
            let mut out = Vec::new();
            Welcome {
                heartbeat_interval_ms: interval,
                heartbeat_timeout_ms: timeout,
                ..welcome()
            }
            .encode(&mut out);
            assert_eq!(
                Welcome::decode(&decode_frame(&out)),
                Err(HandshakeError::InvalidHeartbeat {
                    interval_ms: interval,
                    timeout_ms: timeout
                })
            );
        }
    }

    #[test]
    fn welcome_rejects_too_many_services() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.extend_from_slice(&1000u32.to_be_bytes());
        payload.extend_from_slice(&3000u32.to_be_bytes());
        payload.extend_from_slice(&1025u16.to_be_bytes());
        let bytes = with_payload(FrameType::Welcome, 0, &payload);
        assert!(matches!(
            Welcome::decode(&decode_frame(&bytes)),
            Err(HandshakeError::LengthOutOfRange {
                field: "service count",
                len: 1025,
                ..
            })
        ));
    }

    #[test]
    fn welcome_rejects_bad_service_name() {
        let welcome = Welcome {
            services: vec!["ok".to_owned(), "no space".to_owned()],
            ..welcome()
        };
        let mut out = Vec::new();
        welcome.encode(&mut out);
        assert_eq!(
            Welcome::decode(&decode_frame(&out)),
            Err(HandshakeError::NameCharacter {
                kind: "service name".to_owned(),
                value: "no space".to_owned(),
                character: ' '
            })
        );
    }

    #[test]
    fn reject_rejects_bad_utf8_and_long_message() {
        let bytes = with_payload(FrameType::Reject, 0, &[0, 2, 0, 1, 0xff]);
        assert_eq!(
            Reject::decode(&decode_frame(&bytes)),
            Err(HandshakeError::InvalidUtf8 { field: "message" })
        );

        let mut payload = vec![0, 2];
        payload.extend_from_slice(&1025u16.to_be_bytes());
        payload.extend_from_slice(&[b'x'; 1025]);
        let bytes = with_payload(FrameType::Reject, 0, &payload);
        assert!(matches!(
            Reject::decode(&decode_frame(&bytes)),
            Err(HandshakeError::LengthOutOfRange {
                field: "message",
                len: 1025,
                ..
            })
        ));
    }

    #[test]
    fn validate_name_rules() {
        assert_eq!(validate_name("gateway id", "a"), Ok(()));
        assert_eq!(validate_name("gateway id", "A-z_0.9"), Ok(()));
        assert_eq!(validate_name("gateway id", &"x".repeat(128)), Ok(()));
        assert_eq!(
            validate_name("gateway id", ""),
            Err(HandshakeError::NameLength {
                kind: "gateway id".to_owned(),
                len: 0
            })
        );
        assert!(matches!(
            validate_name("gateway id", &"x".repeat(129)),
            Err(HandshakeError::NameLength { len: 129, .. })
        ));
        for (value, character) in [("a/b", '/'), ("é", 'é'), ("a b", ' '), ("a\nb", '\n')] {
            assert_eq!(
                validate_name("agent name", value),
                Err(HandshakeError::NameCharacter {
                    kind: "agent name".to_owned(),
                    value: value.to_owned(),
                    character
                })
            );
        }
    }

    #[test]
    fn name_error_message() {
        let error = validate_name("agent name", "a/b").unwrap_err();
        assert_eq!(
            error.to_string(),
            "agent name \"a/b\" contains '/', but only ASCII letters, digits, '.', '_' and '-' are allowed"
        );
    }

    #[test]
    fn signed_message_layout() {
        let nonce = [1u8; NONCE_LEN];
        let exporter = [2u8; EXPORTER_LEN];
        let message = signed_message(&nonce, &exporter, "gw", "agent");

        let mut expected = b"ipaas-gateway/1 agent-auth\0".to_vec();
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&[2; 32]);
        expected.extend_from_slice(b"\x02gw\x05agent");
        assert_eq!(message, expected);
    }

    #[test]
    fn signed_message_is_unambiguous() {
        let nonce = [0u8; NONCE_LEN];
        let exporter = [0u8; EXPORTER_LEN];
        assert_ne!(
            signed_message(&nonce, &exporter, "ab", "c"),
            signed_message(&nonce, &exporter, "a", "bc")
        );
    }
}
