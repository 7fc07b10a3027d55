//! The Agent role: per shard, one TLS session to the Server that is re-established with
//! backoff whenever it ends, and one task per stream that dials the private target named
//! by the stream's service.
//!
//! The Agent dials only the targets in its own config. A stream for any other service is
//! reset, logged and counted, so a compromised Server cannot reach other hosts.

pub mod check;
pub mod keygen;

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tracing::Instrument;

use crate::backend::{timeout, Runtime};
use crate::config::{AgentConfig, Endpoint};
use crate::keys::PrivateKey;
use crate::protocol::frame::{Frame, FrameType, RejectReason, ResetReason};
use crate::protocol::handshake::{self, Auth, Challenge, Hello, Reject, Welcome, EXPORTER_LABEL};
use crate::protocol::mux::{Mux, MuxConfig, Role};
use crate::protocol::timing::Backoff;
use crate::protocol::PROTOCOL_VERSION;
use crate::relay::tls::TlsIo;
use crate::relay::{session, stream, BufferPool, Session, SessionEnd, SessionError, Trigger};
use crate::telemetry::Counter;

/// Stream buffers per shard: two per stream, 32 KiB each.
const BUFFER_SIZE: usize = 32 * 1024;
const MAX_IDLE_BUFFERS: usize = 1024;
/// Time limit for the TLS handshake and authentication once TCP is connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Process-wide Agent counters.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub sessions: Counter,
    pub rejections: Counter,
    pub streams: Counter,
    /// Streams refused because their service is not in this Agent's config.
    pub unknown_service: Counter,
    pub connect_failures: Counter,
}

/// State shared by every shard of the Agent.
pub struct AgentShared {
    pub config: AgentConfig,
    pub config_file: std::path::PathBuf,
    pub key: PrivateKey,
    pub tls: Arc<rustls::ClientConfig>,
    /// Random per process; each shard derives its own id from it (see [`Self::shard_instance`]).
    pub instance_id: [u8; 16],
    pub drain_timeout: Duration,
    pub stats: AgentStats,
}

impl AgentShared {
    /// Instance id that shard `shard` sends in its Hello. It stays the same across the
    /// shard's reconnects, so the Server can replace a session it still thinks alive.
    pub fn shard_instance(&self, shard: usize) -> [u8; 16] {
        let mut id = self.instance_id;
        for (byte, shard_byte) in id[12..].iter_mut().zip((shard as u32).to_be_bytes()) {
            *byte ^= shard_byte;
        }
        id
    }
}

/// Runs one Agent shard until `shutdown` fires and its session has drained.
pub async fn run_shard<R: Runtime>(runtime: R, agent: Arc<AgentShared>, shutdown: Rc<Trigger>) {
    let pool = BufferPool::new(BUFFER_SIZE, MAX_IDLE_BUFFERS);
    let mut backoff = Backoff::new(agent.config.reconnect_initial, agent.config.reconnect_max);
    let shard = runtime.shard();

    while !shutdown.is_fired() {
        let attempt = connect_and_serve(&runtime, &agent, &pool, &shutdown, &mut backoff);
        let result = attempt
            .instrument(
                tracing::info_span!("session", shard, gateway.id = %agent.config.gateway_id),
            )
            .await;
        if shutdown.is_fired() {
            break;
        }

        match result {
            Ok(end) => tracing::warn!(shard, ?end, "session ended; reconnecting"),
            Err(error) => report_failure(&agent, shard, &error),
        }
        let delay = backoff.next_delay(rand::thread_rng().gen());
        tracing::info!(
            shard,
            delay_ms = delay.as_millis() as u64,
            "waiting before reconnecting"
        );
        futures_lite::future::or(runtime.sleep(delay), shutdown.wait()).await;
    }
    tracing::info!(shard, "shard stopped");
}

fn report_failure(agent: &AgentShared, shard: usize, error: &SessionError) {
    let config = &agent.config;
    match error {
        SessionError::Rejected { reason, message } => {
            agent.stats.rejections.increment();
            let hint = rejection_hint(agent, *reason);
            tracing::error!(shard, %reason, server.message = %message, server.addr = %config.server, "the Server rejected this Agent: {hint}");
        }
        SessionError::Tls(error) => tracing::error!(
            shard, %error, server.addr = %config.server, server.name = %config.server_name,
            "TLS with the Server failed; check that configs/client/ holds the files issued by this Server and that server.tls_name matches its certificate"
        ),
        error => tracing::warn!(shard, %error, server.addr = %config.server, "session failed"),
    }
}

/// Returns what the Agent's owner can do about a rejection, for the log and for
/// `ipaas-agent check --connect`.
fn rejection_hint(agent: &AgentShared, reason: RejectReason) -> String {
    let config = &agent.config;
    match reason {
        RejectReason::WrongCertificate => format!(
            "the files in {} belong to another gateway; use the configs/client/ folder of the Agent package downloaded for gateway `{}`",
            config.tls.cert.parent().unwrap_or(&config.root).display(),
            config.gateway_id
        ),
        RejectReason::UnknownGateway => format!(
            "check `gateway_id: {}` in {}",
            config.gateway_id,
            agent.config_file.display()
        ),
        RejectReason::AddressNotAllowed => format!(
            "add the address this Agent connects from to the Agent IP allowlist of gateway `{}` on the Server",
            config.gateway_id
        ),
        RejectReason::BadSignature => format!(
            "the key {} (fingerprint {}) is not registered for gateway `{}`; register its public key, made with `openssl rsa -in private.pem -RSAPublicKey_out -out public.pem`",
            config.private_key.display(),
            agent.key.fingerprint(),
            config.gateway_id
        ),
        RejectReason::KeyTooSmall => format!(
            "the key {} has {} bits; create a larger one with `openssl genrsa -out private.pem 2048`",
            config.private_key.display(),
            agent.key.bits()
        ),
        _ => "check the Server's log for details".to_owned(),
    }
}

/// Name lookups running at once in this process, at most [`MAX_LOOKUPS`].
static LOOKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Cap on concurrent name lookups. A lookup that the resolver stalls keeps its thread after
/// the caller has given up, so without a cap a burst of streams to a DNS name could start
/// threads without bound.
const MAX_LOOKUPS: usize = 64;

/// Resolves `endpoint` (DNS names included) to socket addresses.
///
/// Looks each name up on a thread of its own, because the system resolver blocks, so the
/// shard keeps relaying meanwhile. IP literals skip the lookup. When [`MAX_LOOKUPS`] lookups
/// are running, the call fails at once.
pub(crate) async fn resolve(endpoint: &Endpoint) -> std::io::Result<Vec<SocketAddr>> {
    use std::sync::atomic::Ordering;

    if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, endpoint.port)]);
    }
    if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(std::io::Error::other(format!(
            "{MAX_LOOKUPS} name lookups are already running; the resolver for `{}` is slow or stalled",
            endpoint.host
        )));
    }
    let (sender, receiver) = flume::bounded(1);
    let name = (endpoint.host.clone(), endpoint.port);
    let spawned = std::thread::Builder::new()
        .name("ipaas-resolve".into())
        .spawn(move || {
            let result = name
                .to_socket_addrs()
                .map(|addresses| addresses.collect::<Vec<_>>());
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
            let _ = sender.send(result);
        });
    if let Err(error) = spawned {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(error);
    }
    receiver
        .recv_async()
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the name lookup thread ended early")))
}

/// Dials the addresses of `endpoint` in turn and returns the first connection made within `limit`.
async fn dial<R: Runtime>(
    runtime: &R,
    endpoint: &Endpoint,
    limit: Duration,
) -> Result<R::Tcp, SessionError> {
    let mut last_error = SessionError::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{endpoint} resolved to no address"),
    ));
    let addresses = match timeout(runtime, limit, resolve(endpoint)).await {
        Some(addresses) => addresses?,
        None => return Err(SessionError::Timeout("name lookup")),
    };
    for addr in addresses {
        match timeout(runtime, limit, runtime.connect(addr)).await {
            Some(Ok(tcp)) => return Ok(tcp),
            Some(Err(error)) => last_error = SessionError::Io(error),
            None => last_error = SessionError::Timeout("connect"),
        }
    }
    Err(last_error)
}

async fn connect_and_serve<R: Runtime>(
    runtime: &R,
    agent: &Arc<AgentShared>,
    pool: &Rc<BufferPool>,
    shutdown: &Rc<Trigger>,
    backoff: &mut Backoff,
) -> Result<SessionEnd, SessionError> {
    let config = &agent.config;
    let tcp = dial(runtime, &config.server, config.connect_timeout).await?;
    let server_name =
        rustls::pki_types::ServerName::try_from(config.server_name.clone()).map_err(|_| {
            SessionError::Protocol(format!("invalid server.tls_name `{}`", config.server_name))
        })?;
    let tls = rustls::ClientConnection::new(agent.tls.clone(), server_name)?;
    let mut io = TlsIo::new(tcp, rustls::Connection::Client(tls));

    let (welcome, pending) = match timeout(
        runtime,
        HANDSHAKE_TIMEOUT,
        authenticate(&mut io, agent, runtime.shard()),
    )
    .await
    {
        Some(result) => result?,
        None => return Err(SessionError::Timeout("handshake with the Server")),
    };
    backoff.reset();
    agent.stats.sessions.increment();
    check_services(agent, &welcome);
    tracing::info!(
        session.id = welcome.session_id,
        agent.name = %config.agent_name,
        server.addr = %config.server,
        "session established"
    );

    let session = Session::new(
        welcome.session_id,
        Mux::new(Role::Agent, MuxConfig::default()),
    );
    let ended = Trigger::new();
    watch_shutdown(runtime, &session, shutdown, &ended, agent.drain_timeout);

    let on_open = {
        let runtime = runtime.clone();
        let agent = Arc::clone(agent);
        let session = Rc::clone(&session);
        let pool = Rc::clone(pool);
        move |id: u32, service: String| open_target(&runtime, &agent, &session, &pool, id, service)
    };
    // Each side pings on its own schedule and replies to the other's pings, so the Agent's
    // own settings decide how fast it notices a dead Server.
    let heartbeat = (config.heartbeat.interval, config.heartbeat.timeout);
    let result = session::drive(
        runtime.clone(),
        io,
        Rc::clone(&session),
        pending,
        heartbeat,
        on_open,
    )
    .await;
    ended.fire();
    result
}

/// Drains `session` when `shutdown` fires and closes it after `drain_timeout`.
pub(crate) fn watch_shutdown<R: Runtime>(
    runtime: &R,
    session: &Rc<Session>,
    shutdown: &Rc<Trigger>,
    ended: &Rc<Trigger>,
    drain_timeout: Duration,
) {
    let (runtime_for_task, session, shutdown, ended) = (
        runtime.clone(),
        Rc::clone(session),
        Rc::clone(shutdown),
        Rc::clone(ended),
    );
    runtime.spawn(async move {
        futures_lite::future::or(shutdown.wait(), ended.wait()).await;
        if ended.is_fired() {
            return;
        }
        tracing::info!(
            session.id = session.id,
            streams = session.stream_count(),
            "draining session"
        );
        session.drain();
        futures_lite::future::or(runtime_for_task.sleep(drain_timeout), ended.wait()).await;
        if !ended.is_fired() {
            tracing::warn!(
                session.id = session.id,
                streams = session.stream_count(),
                "drain deadline passed; closing session"
            );
            session.close();
        }
    });
}

/// Warns about services the Server routes here that this Agent cannot serve.
fn check_services(agent: &AgentShared, welcome: &Welcome) {
    for service in &welcome.services {
        if !agent.config.services.contains_key(service) {
            tracing::warn!(
                service = %service,
                "the Server routes service `{service}` to this gateway, but {} has no such service; its connections will be rejected",
                agent.config_file.display()
            );
        }
    }
}

/// Runs the Agent side of the handshake: Hello, Challenge, Auth, then Welcome or Reject.
async fn authenticate<T>(
    io: &mut TlsIo<T>,
    agent: &AgentShared,
    shard: usize,
) -> Result<(Welcome, Vec<u8>), SessionError>
where
    T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    io.complete_handshake().await?;
    let config = &agent.config;

    let mut out = Vec::new();
    Hello {
        version: PROTOCOL_VERSION,
        gateway_id: config.gateway_id.clone(),
        agent_name: config.agent_name.clone(),
        instance_id: agent.shard_instance(shard),
    }
    .encode(&mut out);
    io.send(&out).await?;

    let mut pending = Vec::new();
    let (header, payload) = io.receive_frame(&mut pending).await?;
    let frame = Frame {
        header,
        payload: &payload,
    };
    let challenge = match header.kind {
        FrameType::Challenge => Challenge::decode(&frame)?,
        FrameType::Reject => return Err(rejected(&frame)?),
        other => {
            return Err(SessionError::Protocol(format!(
                "expected Challenge, got {other:?}"
            )))
        }
    };

    let mut exporter = [0u8; handshake::EXPORTER_LEN];
    io.tls()
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)?;
    let message = handshake::signed_message(
        &challenge.nonce,
        &exporter,
        &config.gateway_id,
        &config.agent_name,
    );
    out.clear();
    Auth {
        signature: agent.key.sign(&message),
    }
    .encode(&mut out);
    io.send(&out).await?;

    let (header, payload) = io.receive_frame(&mut pending).await?;
    let frame = Frame {
        header,
        payload: &payload,
    };
    match header.kind {
        FrameType::Welcome => Ok((Welcome::decode(&frame)?, pending)),
        FrameType::Reject => Err(rejected(&frame)?),
        other => Err(SessionError::Protocol(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

fn rejected(frame: &Frame<'_>) -> Result<SessionError, SessionError> {
    let reject = Reject::decode(frame)?;
    Ok(SessionError::Rejected {
        reason: reject.reason,
        message: reject.message,
    })
}

/// Handles a stream the Server opened: dial the configured target or reset the stream.
fn open_target<R: Runtime>(
    runtime: &R,
    agent: &Arc<AgentShared>,
    session: &Rc<Session>,
    pool: &Rc<BufferPool>,
    id: u32,
    service: String,
) {
    let Some(target) = agent.config.services.get(&service).cloned() else {
        let total = agent.stats.unknown_service.increment();
        session.reset(id, ResetReason::UnknownService);
        tracing::warn!(
            session.id = session.id, stream.id = id, service = %service, rejected_total = total,
            "rejected a stream for a service that is not in config.yaml"
        );
        return;
    };

    agent.stats.streams.increment();
    let span =
        tracing::info_span!("stream", session.id = session.id, stream.id = id, service = %service);
    let (runtime_for_task, agent, session, pool) = (
        runtime.clone(),
        Arc::clone(agent),
        Rc::clone(session),
        Rc::clone(pool),
    );
    runtime.spawn(
        async move {
            let tcp = match dial(&runtime_for_task, &target, agent.config.connect_timeout).await {
                Ok(tcp) => tcp,
                Err(error) => {
                    agent.stats.connect_failures.increment();
                    let reason = match error {
                        SessionError::Timeout(_) => ResetReason::ConnectTimeout,
                        _ => ResetReason::ConnectRefused,
                    };
                    tracing::warn!(target = %target, %error, "cannot connect to the private service");
                    session.reset(id, reason);
                    return;
                }
            };
            tracing::debug!(target = %target, "connected to the private service");
            let (end, stats, tcp) = stream::relay(session, id, tcp, pool).await;
                if end != stream::StreamEnd::Finished {
                    runtime_for_task.abort(tcp);
                }
            tracing::debug!(?end, bytes.sent = stats.sent, bytes.received = stats.received, "stream ended");
        }
        .instrument(span),
    );
}
