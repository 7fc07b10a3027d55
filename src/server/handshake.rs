//! The Server side of the Agent handshake: Hello, the gateway and allowlist checks, the
//! Challenge, and the signature check against the gateway's registered keys.

use std::net::SocketAddr;

use futures_lite::{AsyncRead, AsyncWrite};
use rand::RngCore;

use super::ServerShared;
use crate::keys::{Fingerprint, RECOMMENDED_KEY_BITS};
use crate::protocol::frame::{Frame, FrameType, RejectReason};
use crate::protocol::handshake::{
    self, Auth, Challenge, HandshakeError, Hello, Reject, Welcome, EXPORTER_LABEL, NONCE_LEN,
};
use crate::protocol::PROTOCOL_VERSION;
use crate::relay::tls::TlsIo;
use crate::relay::SessionError;

/// An authenticated Agent.
pub(super) struct Accepted {
    pub gateway: std::sync::Arc<super::GatewayState>,
    pub agent_name: String,
    pub key_fingerprint: Fingerprint,
    /// Identifies the Agent shard that opened the session, across its reconnects.
    pub instance_id: [u8; 16],
    /// Plaintext that arrived after the Auth message.
    pub pending: Vec<u8>,
}

/// Authenticates an Agent; on failure sends Reject, logs the reason and counts it.
pub(super) async fn authenticate<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut TlsIo<T>,
    shared: &ServerShared,
    peer: SocketAddr,
    session_id: u64,
) -> Result<Accepted, SessionError> {
    io.complete_handshake().await?;

    let mut pending = Vec::new();
    let (header, payload) = io.receive_frame(&mut pending).await?;
    if header.kind != FrameType::Hello {
        return Err(SessionError::Protocol(format!(
            "expected Hello, got {:?}",
            header.kind
        )));
    }
    let hello = match Hello::decode(&Frame {
        header,
        payload: &payload,
    }) {
        Ok(hello) if hello.version == PROTOCOL_VERSION => hello,
        Ok(Hello { version, .. }) | Err(HandshakeError::UnsupportedVersion { version, .. }) => {
            let message = format!(
                "protocol version {version} is not supported; this Server speaks version {PROTOCOL_VERSION}, so update the Agent"
            );
            return reject(io, shared, None, RejectReason::UnsupportedVersion, message).await;
        }
        Err(error) => return Err(error.into()),
    };
    let Some(gateway) = shared.snapshot().gateways.get(&hello.gateway_id).cloned() else {
        let message = format!("gateway `{}` is not known to this Server", hello.gateway_id);
        return reject(
            io,
            shared,
            Some(&hello),
            RejectReason::UnknownGateway,
            message,
        )
        .await;
    };
    let state = &gateway;
    if !state.config.allows(peer.ip()) {
        let message = format!(
            "source address {} is not in the Agent IP allowlist of gateway `{}`",
            crate::config::server::canonical_ip(peer.ip()),
            hello.gateway_id
        );
        return reject(
            io,
            shared,
            Some(&hello),
            RejectReason::AddressNotAllowed,
            message,
        )
        .await;
    }

    // The client certificate names the gateway it was issued for (`pki issue-agent`), so
    // TLS material of one gateway cannot log in to another.
    let certified = certificate_gateway(io.tls());
    if certified.as_deref() != Some(hello.gateway_id.as_str()) {
        let message = format!(
            "the TLS client certificate was issued for gateway `{}`, not `{}`",
            certified.as_deref().unwrap_or("(none)"),
            hello.gateway_id
        );
        return reject(
            io,
            shared,
            Some(&hello),
            RejectReason::WrongCertificate,
            message,
        )
        .await;
    }

    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::new();
    Challenge { nonce }.encode(&mut out);
    io.send(&out).await?;

    let (header, payload) = io.receive_frame(&mut pending).await?;
    if header.kind != FrameType::Auth {
        return Err(SessionError::Protocol(format!(
            "expected Auth, got {:?}",
            header.kind
        )));
    }
    let auth = Auth::decode(&Frame {
        header,
        payload: &payload,
    })?;

    let mut exporter = [0u8; handshake::EXPORTER_LEN];
    io.tls()
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)?;
    let message =
        handshake::signed_message(&nonce, &exporter, &hello.gateway_id, &hello.agent_name);
    let Some(key) = state
        .config
        .public_keys
        .iter()
        .find(|key| key.verify(&message, &auth.signature))
    else {
        let message = format!(
            "the signature does not match any public key registered for gateway `{}`",
            hello.gateway_id
        );
        return reject(
            io,
            shared,
            Some(&hello),
            RejectReason::BadSignature,
            message,
        )
        .await;
    };
    if key.bits() < RECOMMENDED_KEY_BITS {
        tracing::warn!(
            gateway.id = %hello.gateway_id, key.bits = key.bits(), key.fingerprint = %key.fingerprint(),
            "Agent authenticated with a key below {RECOMMENDED_KEY_BITS} bits; register a 2048-bit or larger key"
        );
    }

    out.clear();
    Welcome {
        session_id,
        heartbeat_interval_ms: millis(shared.config.heartbeat.interval),
        heartbeat_timeout_ms: millis(shared.config.heartbeat.timeout),
        services: state
            .config
            .services
            .iter()
            .map(|service| service.name.clone())
            .collect(),
    }
    .encode(&mut out);
    io.send(&out).await?;

    let key_fingerprint = key.fingerprint().clone();
    Ok(Accepted {
        gateway,
        agent_name: hello.agent_name,
        key_fingerprint,
        instance_id: hello.instance_id,
        pending,
    })
}

/// Returns the common name of the peer's certificate, which `pki issue-agent` sets to the
/// gateway id.
fn certificate_gateway(tls: &rustls::Connection) -> Option<String> {
    let certificate = tls.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

fn millis(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

async fn reject<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut TlsIo<T>,
    shared: &ServerShared,
    hello: Option<&Hello>,
    reason: RejectReason,
    message: String,
) -> Result<Accepted, SessionError> {
    let total = shared.stats.rejections.increment();
    let (gateway_id, agent_name) =
        hello.map_or(("", ""), |hello| (&hello.gateway_id, &hello.agent_name));
    tracing::warn!(
        gateway.id = %gateway_id, agent.name = %agent_name, %reason, rejected_total = total,
        "Agent rejected: {message}"
    );
    let mut out = Vec::new();
    Reject::new(reason, message.clone()).encode(&mut out);
    io.send(&out).await?;
    io.close().await;
    Err(SessionError::Rejected { reason, message })
}
