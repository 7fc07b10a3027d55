//! Security gateway that lets a cloud integration platform reach TCP services inside a
//! private network.
//!
//! The Agent (`ipaas-agent`) runs in the private network, dials out to the Server
//! (`ipaas-server`) over mutual TLS, proves its identity with an RSA signature, and then
//! relays every stream the Server opens to the private service named in its own config.
//!
//! Layout:
//! - [`protocol`]: the sans-IO core (frames, handshake messages, stream multiplexer, timers).
//! - [`relay`]: the session and stream drivers shared by every backend.
//! - [`backend`]: the runtimes that perform I/O (glommio on Linux, tokio elsewhere).
//! - [`agent`] and [`server`]: the two roles.
//! - [`config`], [`keys`], [`tls`], [`telemetry`]: configuration, RSA keys, TLS material
//!   and logging.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod agent;
pub mod backend;
pub mod config;
pub mod keys;
pub mod protocol;
pub mod registry;
pub mod relay;
pub mod server;
pub mod telemetry;
pub mod tls;
