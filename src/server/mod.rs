//! The Server role: per shard, an Agent listener and one entry listener per service (all
//! bound with `SO_REUSEPORT`), the Agent handshake, and routing of entry connections to a
//! session of the service's gateway.
//!
//! An entry connection accepted on a shard that has no session of its gateway is handed,
//! as a socket, to a shard that has one.

mod handshake;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::backend::{timeout, Runtime, SHARED_LISTENERS};
use crate::config::server::Gateway;
use crate::config::ServerConfig;
use crate::protocol::mux::{Mux, MuxConfig, Role};
use crate::relay::tls::TlsIo;
use crate::relay::{session, stream, BufferPool, Session, Trigger};
use crate::telemetry::Counter;

const BUFFER_SIZE: usize = 32 * 1024;
const MAX_IDLE_BUFFERS: usize = 1024;

/// Process-wide Server counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub sessions: Counter,
    pub rejections: Counter,
    pub handshake_failures: Counter,
    /// Agent connections closed because too many handshakes were in progress.
    pub unauthenticated_dropped: Counter,
    pub streams: Counter,
    pub handoffs: Counter,
    /// Entry connections closed because no Agent of the gateway was connected.
    pub no_agent: Counter,
}

/// A gateway and the number of its live sessions on each shard.
pub struct GatewayState {
    pub config: Gateway,
    live: Vec<AtomicUsize>,
    next_shard: AtomicUsize,
}

/// An entry connection moving to another shard.
pub struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    gateway: usize,
    service: usize,
}

/// What every shard of the Server shares.
pub struct ServerShared {
    pub config: ServerConfig,
    pub tls: Arc<rustls::ServerConfig>,
    pub gateways: Vec<GatewayState>,
    pub gateway_index: HashMap<String, usize>,
    pub handoff: Vec<flume::Sender<Handoff>>,
    pub stats: ServerStats,
    next_session: AtomicU64,
}

impl ServerShared {
    /// Builds the shared state for `shards` shards; returns the handoff receivers, one per shard.
    pub fn new(
        config: ServerConfig,
        tls: Arc<rustls::ServerConfig>,
        shards: usize,
    ) -> (Arc<Self>, Vec<flume::Receiver<Handoff>>) {
        let (senders, receivers) = (0..shards).map(|_| flume::unbounded()).unzip();
        let gateways: Vec<GatewayState> = config
            .gateways
            .iter()
            .map(|gateway| GatewayState {
                config: gateway.clone(),
                live: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
                next_shard: AtomicUsize::new(0),
            })
            .collect();
        let gateway_index = gateways
            .iter()
            .enumerate()
            .map(|(index, gateway)| (gateway.config.id.clone(), index))
            .collect();
        let shared = Arc::new(Self {
            config,
            tls,
            gateways,
            gateway_index,
            handoff: senders,
            stats: ServerStats::default(),
            next_session: AtomicU64::new(1),
        });
        (shared, receivers)
    }
}

/// State of one Server shard.
struct Shard<R: Runtime> {
    runtime: R,
    shared: Arc<ServerShared>,
    /// Live sessions per gateway, by gateway index.
    sessions: RefCell<Vec<Vec<Rc<Session>>>>,
    next_session: Cell<usize>,
    unauthenticated: Cell<usize>,
    pool: Rc<BufferPool>,
    shutdown: Rc<Trigger>,
}

/// Runs one Server shard until `shutdown` fires and its sessions have drained.
pub async fn run_shard<R: Runtime>(
    runtime: R,
    shared: Arc<ServerShared>,
    handoff: flume::Receiver<Handoff>,
    shutdown: Rc<Trigger>,
) -> anyhow::Result<()> {
    let shard = Rc::new(Shard {
        runtime: runtime.clone(),
        sessions: RefCell::new(vec![Vec::new(); shared.gateways.len()]),
        shared: Arc::clone(&shared),
        next_session: Cell::new(0),
        unauthenticated: Cell::new(0),
        pool: BufferPool::new(BUFFER_SIZE, MAX_IDLE_BUFFERS),
        shutdown: Rc::clone(&shutdown),
    });

    if SHARED_LISTENERS || runtime.shard() == 0 {
        bind_listeners(&shard)?;
    }
    runtime.spawn(receive_handoffs(Rc::clone(&shard), handoff));
    tracing::debug!(shard = runtime.shard(), "shard listening");

    shutdown.wait().await;

    // Sessions drain on their own (see `watch_shutdown`); wait for them to end.
    let deadline = std::time::Instant::now() + shared.config.drain_timeout + Duration::from_secs(2);
    while shard.sessions.borrow().iter().any(|list| !list.is_empty())
        && std::time::Instant::now() < deadline
    {
        runtime.sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(shard = runtime.shard(), "shard stopped");
    Ok(())
}

/// Binds the Agent listener and every entry listener, and starts their accept loops.
fn bind_listeners<R: Runtime>(shard: &Rc<Shard<R>>) -> anyhow::Result<()> {
    let (runtime, shared) = (&shard.runtime, &shard.shared);
    let agent_listener = runtime.listen(shared.config.listen).map_err(|error| {
        anyhow::anyhow!(
            "cannot listen for Agents on {}: {error}",
            shared.config.listen
        )
    })?;
    runtime.spawn(accept_agents(Rc::clone(shard), agent_listener));

    for (gateway, state) in shared.gateways.iter().enumerate() {
        for (service, entry) in state.config.services.iter().enumerate() {
            let listener = runtime.listen(entry.listen).map_err(|error| {
                anyhow::anyhow!(
                    "cannot listen on {} for service `{}` of gateway `{}`: {error}",
                    entry.listen,
                    entry.name,
                    state.config.id
                )
            })?;
            runtime.spawn(accept_entries(Rc::clone(shard), listener, gateway, service));
        }
    }
    Ok(())
}

async fn accept_agents<R: Runtime>(shard: Rc<Shard<R>>, listener: R::Listener) {
    loop {
        let accepted = futures_lite::future::or(
            async { Some(shard.runtime.accept(&listener).await) },
            async {
                shard.shutdown.wait().await;
                None
            },
        )
        .await;
        let (tcp, peer) = match accepted {
            None => return,
            Some(Ok(accepted)) => accepted,
            Some(Err(error)) => {
                tracing::warn!(%error, "accepting an Agent connection failed");
                shard.runtime.sleep(Duration::from_millis(10)).await;
                continue;
            }
        };

        if shard.unauthenticated.get() >= shard.shared.config.max_unauthenticated {
            let total = shard.shared.stats.unauthenticated_dropped.increment();
            tracing::debug!(peer.addr = %peer, dropped_total = total, "too many handshakes in progress; connection closed");
            continue;
        }
        shard.unauthenticated.set(shard.unauthenticated.get() + 1);
        let span = tracing::info_span!("agent", peer.addr = %peer, shard = shard.runtime.shard());
        shard
            .runtime
            .spawn(serve_agent(Rc::clone(&shard), tcp, peer).instrument(span));
    }
}

async fn serve_agent<R: Runtime>(shard: Rc<Shard<R>>, tcp: R::Tcp, peer: SocketAddr) {
    let shared = &shard.shared;
    let tls = match rustls::ServerConnection::new(shared.tls.clone()) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "cannot create a TLS session");
            shard.unauthenticated.set(shard.unauthenticated.get() - 1);
            return;
        }
    };
    let mut io = TlsIo::new(tcp, rustls::Connection::Server(tls));
    let session_id = shared.next_session.fetch_add(1, Ordering::Relaxed);

    let outcome = timeout(
        &shard.runtime,
        shared.config.handshake_timeout,
        handshake::authenticate(&mut io, shared, peer, session_id),
    )
    .await;
    shard.unauthenticated.set(shard.unauthenticated.get() - 1);

    let accepted = match outcome {
        Some(Ok(accepted)) => accepted,
        Some(Err(error)) => {
            shared.stats.handshake_failures.increment();
            tracing::debug!(%error, "handshake failed");
            return;
        }
        None => {
            shared.stats.handshake_failures.increment();
            tracing::debug!("handshake timed out");
            return;
        }
    };

    let gateway = accepted.gateway;
    let state = &shared.gateways[gateway];
    let span = tracing::info_span!(
        "session",
        session.id = session_id,
        gateway.id = %state.config.id,
        agent.name = %accepted.agent_name,
        peer.addr = %peer,
        shard = shard.runtime.shard()
    );
    let session = Session::new(session_id, Mux::new(Role::Server, MuxConfig::default()));
    shard.sessions.borrow_mut()[gateway].push(Rc::clone(&session));
    state.live[shard.runtime.shard()].fetch_add(1, Ordering::AcqRel);
    shared.stats.sessions.increment();

    let ended = Trigger::new();
    crate::agent::watch_shutdown(
        &shard.runtime,
        &session,
        &shard.shutdown,
        &ended,
        shared.config.drain_timeout,
    );
    let heartbeat = (
        shared.config.heartbeat.interval,
        shared.config.heartbeat.timeout,
    );
    async {
        tracing::info!(key.fingerprint = %accepted.key_fingerprint, "Agent session established");
        let result = session::drive(
            shard.runtime.clone(),
            io,
            Rc::clone(&session),
            accepted.pending,
            heartbeat,
            |id, service| tracing::warn!(stream.id = id, service = %service, "Agent tried to open a stream"),
        )
        .await;
        match result {
            Ok(end) => tracing::info!(?end, "Agent session ended"),
            Err(error) => tracing::warn!(%error, "Agent session failed"),
        }
    }
    .instrument(span)
    .await;
    ended.fire();

    state.live[shard.runtime.shard()].fetch_sub(1, Ordering::AcqRel);
    shard.sessions.borrow_mut()[gateway].retain(|other| !Rc::ptr_eq(other, &session));
}

async fn accept_entries<R: Runtime>(
    shard: Rc<Shard<R>>,
    listener: R::Listener,
    gateway: usize,
    service: usize,
) {
    loop {
        let accepted = futures_lite::future::or(
            async { Some(shard.runtime.accept(&listener).await) },
            async {
                shard.shutdown.wait().await;
                None
            },
        )
        .await;
        match accepted {
            None => return,
            Some(Ok((tcp, peer))) => route(&shard, tcp, peer, gateway, service, true),
            Some(Err(error)) => {
                tracing::warn!(%error, "accepting an entry connection failed");
                shard.runtime.sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn receive_handoffs<R: Runtime>(shard: Rc<Shard<R>>, handoff: flume::Receiver<Handoff>) {
    loop {
        let received = futures_lite::future::or(async { handoff.recv_async().await.ok() }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let Some(handoff) = received else {
            return;
        };
        match shard.runtime.adopt(handoff.stream) {
            Ok(tcp) => route(
                &shard,
                tcp,
                handoff.peer,
                handoff.gateway,
                handoff.service,
                false,
            ),
            Err(error) => tracing::warn!(%error, "cannot adopt a handed-over entry connection"),
        }
    }
}

/// Opens a stream for an entry connection on a session of its gateway, on this shard if
/// one is here, else by handing the connection to a shard that has one.
fn route<R: Runtime>(
    shard: &Rc<Shard<R>>,
    tcp: R::Tcp,
    peer: SocketAddr,
    gateway: usize,
    service: usize,
    may_hand_off: bool,
) {
    let shared = &shard.shared;
    let state = &shared.gateways[gateway];
    let service_name = &state.config.services[service].name;

    if let Some(session) = pick_session(shard, gateway) {
        let id = match session.open_stream(service_name) {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, gateway.id = %state.config.id, service = %service_name, "cannot open a stream; entry connection closed");
                return;
            }
        };
        shared.stats.streams.increment();
        let span = tracing::info_span!(
            "stream",
            session.id = session.id,
            stream.id = id,
            gateway.id = %state.config.id,
            service = %service_name,
            peer.addr = %peer
        );
        let pool = Rc::clone(&shard.pool);
        shard.runtime.spawn(
            async move {
                let (end, stats) = stream::relay(session, id, tcp, pool).await;
                tracing::debug!(
                    ?end,
                    bytes.sent = stats.sent,
                    bytes.received = stats.received,
                    "stream ended"
                );
            }
            .instrument(span),
        );
        return;
    }

    if may_hand_off {
        let shards = state.live.len();
        let start = state.next_shard.fetch_add(1, Ordering::Relaxed);
        let here = shard.runtime.shard();
        let target = (0..shards)
            .map(|offset| (start + offset) % shards)
            .find(|&other| other != here && state.live[other].load(Ordering::Acquire) > 0);
        if let Some(target) = target {
            match shard.runtime.release(tcp) {
                Ok(stream) => {
                    let handoff = Handoff {
                        stream,
                        peer,
                        gateway,
                        service,
                    };
                    if shared.handoff[target].send(handoff).is_ok() {
                        shared.stats.handoffs.increment();
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot hand over an entry connection"),
            }
            return;
        }
    }

    let total = shared.stats.no_agent.increment();
    tracing::warn!(
        gateway.id = %state.config.id, service = %service_name, peer.addr = %peer, closed_total = total,
        "no Agent of this gateway is connected; entry connection closed"
    );
}

/// Picks the next accepting session of `gateway` on this shard, round robin.
fn pick_session<R: Runtime>(shard: &Shard<R>, gateway: usize) -> Option<Rc<Session>> {
    let sessions = shard.sessions.borrow();
    let list = &sessions[gateway];
    let start = shard.next_session.get();
    shard.next_session.set(start.wrapping_add(1));
    (0..list.len())
        .map(|offset| &list[(start + offset) % list.len()])
        .find(|session| session.is_accepting())
        .cloned()
}
