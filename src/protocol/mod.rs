//! Sans-IO protocol core shared by the Server and the Agent: frame format, handshake
//! messages, stream multiplexer and timers.
//!
//! Nothing here opens a socket, reads a clock or draws random numbers. Callers pass in
//! received bytes, the current time and random values, and take out the bytes to send, so
//! every backend (glommio or tokio) drives the same code on the thread that owns the
//! session. The wire format is described in `docs/protocol.md`.

pub mod frame;
pub mod handshake;
pub mod mux;
pub mod timing;

pub use frame::{
    Frame, FrameError, FrameHeader, FrameType, GoAwayReason, RejectReason, ResetReason,
};
pub use handshake::{Auth, Challenge, HandshakeError, Hello, Reject, Welcome};
pub use mux::{Event, Mux, MuxConfig, MuxError, Role, StreamRead};
pub use timing::{Backoff, Heartbeat, HeartbeatAction};

/// Protocol version that this build speaks, sent in the Hello.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN protocol id that both sides require during the TLS handshake.
pub const ALPN: &[u8] = b"ipaas-gw/1";
