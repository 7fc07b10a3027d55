//! The Server role: per shard, an Agent listener and one entry listener per service (all
//! bound with `SO_REUSEPORT` on Linux), the Agent handshake, and routing of entry
//! connections to a session of the service's gateway.
//!
//! Gateways come from the registry. After every change [`ServerShared::reload`] publishes
//! a new [`Snapshot`] and asks each shard to reconcile: bind listeners of new services,
//! close those of removed ones, and close sessions whose Agent no longer passes the
//! allowlist or key check. An entry connection accepted on a shard that has no session of
//! its gateway is handed, as a socket, to a shard that has one.

pub mod admin;
pub mod cli;
mod handshake;
pub mod metrics;
pub mod package;
mod pending;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tracing::Instrument;

use crate::backend::{timeout, Runtime, SHARED_LISTENERS};
use crate::config::server::Gateway;
use crate::config::ServerConfig;
use crate::keys::Fingerprint;
use crate::protocol::mux::{Mux, MuxConfig, Role};
use crate::registry::{self, GatewayRecord, Registry, RegistryError};
use crate::relay::tls::{TlsIo, TlsState};
use crate::relay::{session, stream, BufferPool, Session, Trigger};
use crate::telemetry::Counter;
use pending::PendingHandshakes;

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
    /// Handshakes closed early to make room for a new connection when the cap was reached.
    pub unauthenticated_evicted: Counter,
    pub streams: Counter,
    pub handoffs: Counter,
    /// Entry connections closed because no Agent of the gateway was connected.
    pub no_agent: Counter,
    /// Sessions closed because a registry change no longer admits their Agent.
    pub revoked: Counter,
    /// Sessions closed because their Agent instance logged in again.
    pub replaced: Counter,
    /// Sessions moved to another shard after authentication, to balance a gateway's
    /// sessions over the shards.
    pub sessions_moved: Counter,
    /// Agent connections closed by the per-source rate limit.
    pub rate_limited: Counter,
    /// Bytes read from entry connections and relayed to Agents.
    pub entry_bytes_received: Counter,
    /// Bytes relayed from Agents and written to entry connections.
    pub entry_bytes_sent: Counter,
    /// Time from accepting an Agent connection to its Welcome.
    pub handshake_seconds: metrics::HandshakeTimes,
}

/// Live sessions of one gateway per shard; kept across registry changes.
#[derive(Debug)]
pub struct LiveCounts {
    per_shard: Vec<AtomicUsize>,
    /// Sessions placed on each shard that it does not run yet: they are on their way to it
    /// (see [`ShardMessage::Session`]) or about to start there.
    arriving: Vec<AtomicUsize>,
    /// Serializes placement decisions, so that sessions authenticated at the same moment on
    /// different shards still spread evenly. Taken once per new session, never per stream.
    placement: Mutex<()>,
    next_shard: AtomicUsize,
}

impl LiveCounts {
    /// Returns the sessions of shard `shard`, including those on their way to it.
    fn load(&self, shard: usize) -> usize {
        self.per_shard[shard].load(Ordering::Acquire) + self.arriving[shard].load(Ordering::Acquire)
    }
}

/// A gateway in the form the data plane uses.
pub struct GatewayState {
    pub config: Gateway,
    pub record: GatewayRecord,
    live: Arc<LiveCounts>,
}

/// The gateways in force; replaced as a whole on every registry change.
#[derive(Default)]
pub struct Snapshot {
    pub gateways: HashMap<String, Arc<GatewayState>>,
}

/// Messages to a shard.
pub enum ShardMessage {
    /// An entry connection accepted by another shard.
    Handoff(Handoff),
    /// The snapshot changed.
    Reconfigure,
    /// The Agent instance of this session logged in again; close the old session.
    Replace { session_id: u64 },
    /// An authenticated Agent session that another shard moved here.
    Session(Box<MovedSession>),
}

/// An Agent session moving to another shard right after its authentication.
pub struct MovedSession {
    stream: std::net::TcpStream,
    tls: TlsState,
    accepted: handshake::Accepted,
    peer: SocketAddr,
    session_id: u64,
}

/// An entry connection moving to another shard.
pub struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    gateway: String,
    service: String,
}

/// State shared by every shard of the Server.
pub struct ServerShared {
    pub config: ServerConfig,
    pub tls: Arc<rustls::ServerConfig>,
    pub registry: Arc<dyn Registry>,
    pub stats: ServerStats,
    snapshot: RwLock<Arc<Snapshot>>,
    live: Mutex<HashMap<String, Arc<LiveCounts>>>,
    /// Latest session of each Agent instance: (shard, session id).
    instances: Mutex<HashMap<[u8; 16], (usize, u64)>>,
    shards: usize,
    messages: Vec<flume::Sender<ShardMessage>>,
    next_session: AtomicU64,
    /// Handshakes in progress on all shards, for the metrics.
    pending_handshakes: AtomicUsize,
}

impl ServerShared {
    /// Builds the shared state for `shards` shards and loads the registry; returns the
    /// message receivers, one per shard.
    pub fn new(
        config: ServerConfig,
        tls: Arc<rustls::ServerConfig>,
        registry: Arc<dyn Registry>,
        shards: usize,
    ) -> Result<(Arc<Self>, Vec<flume::Receiver<ShardMessage>>), RegistryError> {
        let (senders, receivers) = (0..shards).map(|_| flume::unbounded()).unzip();
        let shared = Arc::new(Self {
            config,
            tls,
            registry,
            stats: ServerStats::default(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            live: Mutex::new(HashMap::new()),
            instances: Mutex::new(HashMap::new()),
            shards,
            messages: senders,
            next_session: AtomicU64::new(1),
            pending_handshakes: AtomicUsize::new(0),
        });
        shared.reload()?;
        Ok((shared, receivers))
    }

    /// Returns the gateways in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .snapshot
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Rebuilds the snapshot from the registry and sends every shard a Reconfigure message.
    pub fn reload(&self) -> Result<(), RegistryError> {
        let mut gateways = HashMap::new();
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for record in self.registry.list()? {
            let config = match registry::resolve(&record, self.config.min_key_bits) {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(gateway.id = %record.id, %error, "stored gateway is invalid and is not served");
                    continue;
                }
            };
            let counts = live.entry(record.id.clone()).or_insert_with(|| {
                Arc::new(LiveCounts {
                    per_shard: (0..self.shards).map(|_| AtomicUsize::new(0)).collect(),
                    arriving: (0..self.shards).map(|_| AtomicUsize::new(0)).collect(),
                    placement: Mutex::new(()),
                    next_shard: AtomicUsize::new(0),
                })
            });
            let state = GatewayState {
                config,
                live: Arc::clone(counts),
                record,
            };
            gateways.insert(state.record.id.clone(), Arc::new(state));
        }
        drop(live);

        let count = gateways.len();
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(Snapshot { gateways });
        for sender in &self.messages {
            let _ = sender.send(ShardMessage::Reconfigure);
        }
        tracing::info!(gateways = count, "gateway configuration applied");
        Ok(())
    }
}

/// A listener's identity: a service's entry address.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ListenerKey {
    gateway: String,
    service: String,
    listen: SocketAddr,
}

/// An authenticated session and what admitted it.
struct LiveSession {
    session: Rc<Session>,
    peer: SocketAddr,
    key: Fingerprint,
}

/// State of one Server shard.
struct Shard<R: Runtime> {
    runtime: R,
    shared: Arc<ServerShared>,
    /// Live sessions by gateway id.
    sessions: RefCell<HashMap<String, Vec<LiveSession>>>,
    /// Entry listeners of this shard, each with the trigger that stops its accept loop.
    listeners: RefCell<HashMap<ListenerKey, Rc<Trigger>>>,
    next_session: Cell<usize>,
    /// Handshakes in progress on this shard, oldest first.
    pending: RefCell<PendingHandshakes>,
    next_pending: Cell<u64>,
    /// Token buckets of the per-source handshake rate limit.
    rate: RefCell<HashMap<std::net::IpAddr, Bucket>>,
    pool: Rc<BufferPool>,
    shutdown: Rc<Trigger>,
}

impl<R: Runtime> Shard<R> {
    fn listens(&self) -> bool {
        SHARED_LISTENERS || self.runtime.shard() == 0
    }
}

/// Runs one Server shard until `shutdown` fires and its sessions have drained.
pub async fn run_shard<R: Runtime>(
    runtime: R,
    shared: Arc<ServerShared>,
    messages: flume::Receiver<ShardMessage>,
    shutdown: Rc<Trigger>,
) -> anyhow::Result<()> {
    let shard = Rc::new(Shard {
        runtime: runtime.clone(),
        sessions: RefCell::new(HashMap::new()),
        listeners: RefCell::new(HashMap::new()),
        shared: Arc::clone(&shared),
        next_session: Cell::new(0),
        pending: RefCell::new(PendingHandshakes::default()),
        next_pending: Cell::new(0),
        rate: RefCell::new(HashMap::new()),
        pool: BufferPool::new(BUFFER_SIZE, MAX_IDLE_BUFFERS),
        shutdown: Rc::clone(&shutdown),
    });

    if shard.listens() {
        let agent_listener = runtime.listen(shared.config.listen).map_err(|error| {
            anyhow::anyhow!(
                "cannot listen for Agents on {}: {error}",
                shared.config.listen
            )
        })?;
        runtime.spawn(accept_agents(Rc::clone(&shard), agent_listener));
    }
    reconcile(&shard, true)?;
    runtime.spawn(receive_messages(Rc::clone(&shard), messages));
    tracing::debug!(shard = runtime.shard(), "shard listening");

    shutdown.wait().await;

    // Sessions drain on their own (see `watch_shutdown`); wait for them to end.
    let deadline = std::time::Instant::now() + shared.config.drain_timeout + Duration::from_secs(2);
    while shard
        .sessions
        .borrow()
        .values()
        .any(|list| !list.is_empty())
        && std::time::Instant::now() < deadline
    {
        runtime.sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(shard = runtime.shard(), "shard stopped");
    Ok(())
}

/// Brings the shard in line with the snapshot: entry listeners, then sessions. At start
/// (`initial`) a listener that cannot bind is an error; later it is logged.
fn reconcile<R: Runtime>(shard: &Rc<Shard<R>>, initial: bool) -> anyhow::Result<()> {
    let snapshot = shard.shared.snapshot();

    if shard.listens() {
        let desired: HashSet<ListenerKey> = snapshot
            .gateways
            .values()
            .flat_map(|gateway| {
                gateway.config.services.iter().map(|service| ListenerKey {
                    gateway: gateway.config.id.clone(),
                    service: service.name.clone(),
                    listen: service.listen,
                })
            })
            .collect();

        shard.listeners.borrow_mut().retain(|key, stop| {
            let keep = desired.contains(key);
            if !keep {
                tracing::info!(gateway.id = %key.gateway, service = %key.service, listen = %key.listen, "service removed; entry listener closed");
                stop.fire();
            }
            keep
        });

        for key in desired {
            if shard.listeners.borrow().contains_key(&key) {
                continue;
            }
            let listener = match shard.runtime.listen(key.listen) {
                Ok(listener) => listener,
                Err(error) => {
                    let message = format!(
                        "cannot listen on {} for service `{}` of gateway `{}`: {error}",
                        key.listen, key.service, key.gateway
                    );
                    if initial {
                        anyhow::bail!(message);
                    }
                    tracing::error!("{message}");
                    continue;
                }
            };
            if !initial {
                tracing::info!(gateway.id = %key.gateway, service = %key.service, listen = %key.listen, "service added; entry listener open");
            }
            let stop = Trigger::new();
            shard
                .listeners
                .borrow_mut()
                .insert(key.clone(), Rc::clone(&stop));
            shard
                .runtime
                .spawn(accept_entries(Rc::clone(shard), listener, key, stop));
        }
    }

    close_revoked_sessions(shard, &snapshot);
    Ok(())
}

/// Closes the sessions of this shard whose Agent `snapshot` no longer admits.
fn close_revoked_sessions<R: Runtime>(shard: &Shard<R>, snapshot: &Snapshot) {
    let mut revoked = Vec::new();
    for (gateway_id, list) in shard.sessions.borrow().iter() {
        let gateway = snapshot.gateways.get(gateway_id);
        for live in list {
            let reason = match gateway {
                None => Some("the gateway was deleted"),
                Some(gateway) if !gateway.config.allows(live.peer.ip()) => {
                    Some("the Agent's address is no longer in the allowlist")
                }
                Some(gateway)
                    if !gateway
                        .config
                        .public_keys
                        .iter()
                        .any(|key| key.fingerprint() == &live.key) =>
                {
                    Some("the Agent's key is no longer registered")
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                revoked.push((
                    gateway_id.clone(),
                    Rc::clone(&live.session),
                    live.peer,
                    reason,
                ));
            }
        }
    }
    for (gateway_id, session, peer, reason) in revoked {
        let total = shard.shared.stats.revoked.increment();
        tracing::warn!(gateway.id = %gateway_id, session.id = session.id, peer.addr = %peer, revoked_total = total, "closing Agent session: {reason}");
        session.close();
    }
}

async fn receive_messages<R: Runtime>(
    shard: Rc<Shard<R>>,
    messages: flume::Receiver<ShardMessage>,
) {
    loop {
        let received =
            futures_lite::future::or(async { messages.recv_async().await.ok() }, async {
                shard.shutdown.wait().await;
                None
            })
            .await;
        match received {
            None => return,
            Some(ShardMessage::Reconfigure) => {
                let _ = reconcile(&shard, false);
            }
            Some(ShardMessage::Replace { session_id }) => replace_session(&shard, session_id),
            Some(ShardMessage::Session(moved)) => adopt_session(&shard, *moved),
            Some(ShardMessage::Handoff(handoff)) => match shard.runtime.adopt(handoff.stream) {
                Ok(tcp) => route(
                    &shard,
                    tcp,
                    handoff.peer,
                    &handoff.gateway,
                    &handoff.service,
                    false,
                ),
                Err(error) => tracing::warn!(%error, "cannot adopt a handed-over entry connection"),
            },
        }
    }
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

        if !admit(&shard, peer.ip()) {
            let total = shard.shared.stats.rate_limited.increment();
            if total.is_power_of_two() {
                tracing::warn!(peer.addr = %peer, rate_limited_total = total, "too many new connections from this address; closing them");
            }
            continue;
        }
        if !make_room(&shard, peer) {
            continue;
        }
        let id = shard.next_pending.get();
        shard.next_pending.set(id + 1);
        shard
            .shared
            .pending_handshakes
            .fetch_add(1, Ordering::Relaxed);
        let evict = shard
            .pending
            .borrow_mut()
            .insert(id, std::time::Instant::now());
        let span = tracing::info_span!("agent", peer.addr = %peer, shard = shard.runtime.shard());
        shard
            .runtime
            .spawn(serve_agent(Rc::clone(&shard), tcp, peer, id, evict).instrument(span));
        // Let the new handshake read its first bytes before the next accept, so that the
        // cap can distinguish a connection that sent its ClientHello from an idle one.
        futures_lite::future::yield_now().await;
    }
}

/// Forgets handshake `id` once it has ended, unless [`make_room`] already closed it.
fn finish_pending<R: Runtime>(shard: &Shard<R>, id: u64) {
    if shard.pending.borrow_mut().remove(id) {
        shard
            .shared
            .pending_handshakes
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Applies the cap on handshakes in progress and returns whether a connection from `peer`
/// may start one. When the cap is reached, [`PendingHandshakes::evict_for_new`] closes an
/// idle or slow handshake to make room, or the new connection is closed.
fn make_room<R: Runtime>(shard: &Shard<R>, peer: SocketAddr) -> bool {
    let config = &shard.shared.config;
    let mut pending = shard.pending.borrow_mut();
    if pending.len() < config.max_unauthenticated {
        return true;
    }
    let stats = &shard.shared.stats;
    let spoken_grace = config.handshake_timeout / 2;
    let Some(reason) = pending.evict_for_new(std::time::Instant::now(), spoken_grace) else {
        let total = stats.unauthenticated_dropped.increment();
        if total.is_power_of_two() {
            tracing::warn!(peer.addr = %peer, dropped_total = total, max_unauthenticated = config.max_unauthenticated, "too many handshakes in progress; connection closed (raise max_unauthenticated if these are Agents)");
        } else {
            tracing::debug!(peer.addr = %peer, dropped_total = total, "too many handshakes in progress; connection closed");
        }
        return false;
    };
    shard
        .shared
        .pending_handshakes
        .fetch_sub(1, Ordering::Relaxed);
    let total = stats.unauthenticated_evicted.increment();
    if total.is_power_of_two() {
        tracing::warn!(peer.addr = %peer, evicted_total = total, ?reason, "too many handshakes in progress; closed the oldest idle or slow one");
    } else {
        tracing::debug!(peer.addr = %peer, evicted_total = total, ?reason, "too many handshakes in progress; closed the oldest idle or slow one");
    }
    true
}

/// A token bucket: `tokens` refill at the configured rate up to twice the rate.
struct Bucket {
    tokens: f64,
    updated: std::time::Instant,
}

/// Applies the per-source handshake rate limit; returns whether `source` may connect.
fn admit<R: Runtime>(shard: &Shard<R>, source: std::net::IpAddr) -> bool {
    let rate = f64::from(shard.shared.config.handshake_rate_per_source);
    if rate == 0.0 {
        return true;
    }
    let now = std::time::Instant::now();
    let burst = rate * 2.0;
    let mut buckets = shard.rate.borrow_mut();

    // Forget sources whose bucket has refilled, so a scan of many addresses cannot grow
    // the map without bound.
    if buckets.len() > 4096 {
        buckets.retain(|_, bucket| {
            bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < burst
        });
    }
    let bucket = buckets
        .entry(crate::config::server::canonical_ip(source))
        .or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
    bucket.tokens =
        (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
    bucket.updated = now;
    if bucket.tokens < 1.0 {
        return false;
    }
    bucket.tokens -= 1.0;
    true
}

async fn serve_agent<R: Runtime>(
    shard: Rc<Shard<R>>,
    tcp: R::Tcp,
    peer: SocketAddr,
    pending_id: u64,
    evict: Rc<Trigger>,
) {
    let shared = &shard.shared;
    let tls = match rustls::ServerConnection::new(shared.tls.clone()) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "cannot create a TLS session");
            finish_pending(&shard, pending_id);
            return;
        }
    };
    let mut io = TlsIo::new(tcp, rustls::Connection::Server(tls));
    let session_id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();

    let outcome = futures_lite::future::or(
        async {
            timeout(&shard.runtime, shared.config.handshake_timeout, async {
                io.receive_first_flight().await?;
                shard.pending.borrow_mut().mark_spoken(pending_id);
                handshake::authenticate(&mut io, shared, peer, session_id).await
            })
            .await
        },
        async {
            evict.wait().await;
            None
        },
    )
    .await;
    finish_pending(&shard, pending_id);

    let accepted = match outcome {
        Some(Ok(accepted)) => {
            shared.stats.handshake_seconds.observe(started.elapsed());
            accepted
        }
        Some(Err(error)) => {
            // Scanners and junk fail here all the time: warn at powers of two only.
            let total = shared.stats.handshake_failures.increment();
            if total.is_power_of_two() {
                tracing::warn!(%error, failed_total = total, "handshake failed");
            } else {
                tracing::debug!(%error, failed_total = total, "handshake failed");
            }
            return;
        }
        // The counter and the log line of an eviction are in `make_room`.
        None if evict.is_fired() => return,
        None => {
            let total = shared.stats.handshake_failures.increment();
            if total.is_power_of_two() {
                tracing::warn!(failed_total = total, "handshake timed out");
            } else {
                tracing::debug!(failed_total = total, "handshake timed out");
            }
            return;
        }
    };

    // The kernel's SO_REUSEPORT hash, or a single accepting shard on macOS and Windows, can
    // put all sessions of a gateway on one shard, which would then relay all its streams.
    let here = shard.runtime.shard();
    let target = place_session(&accepted.gateway.live, here);
    if target == here {
        run_session(shard, io, accepted, peer, session_id).await;
    } else {
        move_session(&shard, io, accepted, peer, session_id, target).await;
    }
}

/// Chooses the shard that runs a new session of the gateway with `live` counts, the one with
/// the fewest sessions of that gateway (`here` on a tie), and counts the session as arriving
/// there. [`run_session`] turns it into a running one.
fn place_session(live: &LiveCounts, here: usize) -> usize {
    let _placing = live
        .placement
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut target = here;
    let mut fewest = live.load(here);
    for shard in 0..live.per_shard.len() {
        let load = live.load(shard);
        if load < fewest {
            (target, fewest) = (shard, load);
        }
    }
    live.arriving[target].fetch_add(1, Ordering::AcqRel);
    target
}

/// Sends an authenticated session to shard `target`, which continues it in [`adopt_session`].
async fn move_session<R: Runtime>(
    shard: &Shard<R>,
    mut io: TlsIo<R::Tcp>,
    accepted: handshake::Accepted,
    peer: SocketAddr,
    session_id: u64,
    target: usize,
) {
    let live = Arc::clone(&accepted.gateway.live);
    // Write out the Welcome first, so that the socket changes owner with nothing pending.
    if let Err(error) = std::future::poll_fn(|cx| io.poll_flush(cx)).await {
        live.arriving[target].fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(%error, session.id = session_id, "Agent session failed before it could move to another shard");
        return;
    }
    let (tcp, tls) = io.into_parts();
    let stream = match shard.runtime.release(tcp) {
        Ok(stream) => stream,
        Err(error) => {
            live.arriving[target].fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%error, session.id = session_id, "cannot move an Agent session to another shard; the Agent will reconnect");
            return;
        }
    };
    let moved = MovedSession {
        stream,
        tls,
        accepted,
        peer,
        session_id,
    };
    if shard.shared.messages[target]
        .send(ShardMessage::Session(Box::new(moved)))
        .is_err()
    {
        // Only a shard that has stopped drops its receiver; the Server is shutting down.
        live.arriving[target].fetch_sub(1, Ordering::AcqRel);
        return;
    }
    shard.shared.stats.sessions_moved.increment();
    tracing::debug!(
        session.id = session_id,
        to_shard = target,
        "Agent session moved to the shard with the fewest sessions of its gateway"
    );
}

/// Continues a session that another shard moved here.
fn adopt_session<R: Runtime>(shard: &Rc<Shard<R>>, moved: MovedSession) {
    let here = shard.runtime.shard();
    let tcp = match shard.runtime.adopt(moved.stream) {
        Ok(tcp) => tcp,
        Err(error) => {
            moved.accepted.gateway.live.arriving[here].fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%error, session.id = moved.session_id, "cannot adopt a moved Agent session; the Agent will reconnect");
            return;
        }
    };
    let io = TlsIo::from_parts(tcp, moved.tls);
    let span = tracing::info_span!("agent", peer.addr = %moved.peer, shard = here);
    shard.runtime.spawn(
        run_session(
            Rc::clone(shard),
            io,
            moved.accepted,
            moved.peer,
            moved.session_id,
        )
        .instrument(span),
    );
}

/// Serves an authenticated Agent session on this shard, which [`place_session`] chose,
/// until it ends.
async fn run_session<R: Runtime>(
    shard: Rc<Shard<R>>,
    io: TlsIo<R::Tcp>,
    accepted: handshake::Accepted,
    peer: SocketAddr,
    session_id: u64,
) {
    let shared = &shard.shared;
    let gateway = Arc::clone(&accepted.gateway);
    let gateway_id = gateway.config.id.clone();
    let span = tracing::info_span!(
        "session",
        session.id = session_id,
        gateway.id = %gateway_id,
        agent.name = %accepted.agent_name
    );
    let session = Session::new(session_id, Mux::new(Role::Server, MuxConfig::default()));
    shard
        .sessions
        .borrow_mut()
        .entry(gateway_id.clone())
        .or_default()
        .push(LiveSession {
            session: Rc::clone(&session),
            peer,
            key: accepted.key_fingerprint.clone(),
        });
    gateway.live.per_shard[shard.runtime.shard()].fetch_add(1, Ordering::AcqRel);
    gateway.live.arriving[shard.runtime.shard()].fetch_sub(1, Ordering::AcqRel);
    shared.stats.sessions.increment();

    // An Agent that reconnects while its old session still looks alive (a link that died
    // without a FIN) replaces it, so the old one leaks nothing until its heartbeat expires.
    let here = (shard.runtime.shard(), session_id);
    let previous = shared
        .instances
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(accepted.instance_id, here);
    if let Some((old_shard, old_session)) = previous {
        if old_shard == here.0 {
            replace_session(&shard, old_session);
        } else {
            let _ = shared.messages[old_shard].send(ShardMessage::Replace {
                session_id: old_session,
            });
        }
    }

    // A registry change may have revoked this Agent while it was authenticating.
    close_revoked_sessions(&shard, &shared.snapshot());

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

    gateway.live.per_shard[shard.runtime.shard()].fetch_sub(1, Ordering::AcqRel);
    {
        let mut instances = shared
            .instances
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if instances.get(&accepted.instance_id) == Some(&here) {
            instances.remove(&accepted.instance_id);
        }
    }
    if let Some(list) = shard.sessions.borrow_mut().get_mut(&gateway_id) {
        list.retain(|live| !Rc::ptr_eq(&live.session, &session));
    }
}

/// Closes session `session_id` of this shard, whose Agent instance has logged in again.
fn replace_session<R: Runtime>(shard: &Shard<R>, session_id: u64) {
    let sessions = shard.sessions.borrow();
    let found = sessions
        .iter()
        .flat_map(|(gateway_id, list)| list.iter().map(move |live| (gateway_id, live)))
        .find(|(_, live)| live.session.id == session_id);
    if let Some((gateway_id, live)) = found {
        let total = shard.shared.stats.replaced.increment();
        tracing::info!(
            gateway.id = %gateway_id, session.id = session_id, peer.addr = %live.peer, replaced_total = total,
            "the Agent logged in again; closing its old session"
        );
        live.session.close();
    }
}

async fn accept_entries<R: Runtime>(
    shard: Rc<Shard<R>>,
    listener: R::Listener,
    key: ListenerKey,
    stop: Rc<Trigger>,
) {
    loop {
        let accepted = futures_lite::future::or(
            async { Some(shard.runtime.accept(&listener).await) },
            async {
                futures_lite::future::or(shard.shutdown.wait(), stop.wait()).await;
                None
            },
        )
        .await;
        match accepted {
            None => return,
            Some(Ok((tcp, peer))) => route(&shard, tcp, peer, &key.gateway, &key.service, true),
            Some(Err(error)) => {
                tracing::warn!(%error, "accepting an entry connection failed");
                shard.runtime.sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Opens a stream for an entry connection on a session of its gateway, on this shard if
/// one is here, else by handing the connection to a shard that has one.
fn route<R: Runtime>(
    shard: &Rc<Shard<R>>,
    tcp: R::Tcp,
    peer: SocketAddr,
    gateway_id: &str,
    service: &str,
    may_hand_off: bool,
) {
    let shared = &shard.shared;
    let Some(gateway) = shared.snapshot().gateways.get(gateway_id).cloned() else {
        tracing::debug!(gateway.id = %gateway_id, "gateway was deleted; entry connection closed");
        return;
    };

    let here = shard.runtime.shard();
    if may_hand_off && !SHARED_LISTENERS {
        // Only this shard accepts entry connections, so it spreads them round robin over
        // the shards that run a session of the gateway, itself included.
        if let Some(target) = next_shard_with_session(&gateway.live, None) {
            if target != here {
                hand_off(shard, tcp, peer, gateway_id, service, target);
                return;
            }
        }
    }

    if let Some(session) = pick_session(shard, gateway_id) {
        let id = match session.open_stream(service) {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, gateway.id = %gateway_id, service = %service, "cannot open a stream; entry connection closed");
                return;
            }
        };
        shared.stats.streams.increment();
        let span = tracing::info_span!(
            "stream",
            session.id = session.id,
            stream.id = id,
            gateway.id = %gateway_id,
            service = %service,
            peer.addr = %peer
        );
        let pool = Rc::clone(&shard.pool);
        let runtime = shard.runtime.clone();
        let shared_stats = Arc::clone(shared);
        shard.runtime.spawn(
            async move {
                let (end, stats, tcp) = stream::relay(session, id, tcp, pool).await;
                let totals = &shared_stats.stats;
                totals.entry_bytes_received.add(stats.sent);
                totals.entry_bytes_sent.add(stats.received);
                if end != stream::StreamEnd::Finished {
                    runtime.abort(tcp);
                }
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
        if let Some(target) = next_shard_with_session(&gateway.live, Some(here)) {
            hand_off(shard, tcp, peer, gateway_id, service, target);
            return;
        }
    }

    let total = shared.stats.no_agent.increment();
    tracing::warn!(
        gateway.id = %gateway_id, service = %service, peer.addr = %peer, closed_total = total,
        "no Agent of this gateway is connected; entry connection closed"
    );
}

/// Returns the next shard, round robin, that runs a session of the gateway with `live`
/// counts, skipping `except`.
fn next_shard_with_session(live: &LiveCounts, except: Option<usize>) -> Option<usize> {
    let shards = live.per_shard.len();
    let start = live.next_shard.fetch_add(1, Ordering::Relaxed);
    (0..shards)
        .map(|offset| (start + offset) % shards)
        .find(|&other| Some(other) != except && live.per_shard[other].load(Ordering::Acquire) > 0)
}

/// Sends an entry connection to shard `target`, which routes it without handing it off again.
fn hand_off<R: Runtime>(
    shard: &Shard<R>,
    tcp: R::Tcp,
    peer: SocketAddr,
    gateway_id: &str,
    service: &str,
    target: usize,
) {
    let stream = match shard.runtime.release(tcp) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, gateway.id = %gateway_id, peer.addr = %peer, "cannot hand over an entry connection");
            return;
        }
    };
    let handoff = Handoff {
        stream,
        peer,
        gateway: gateway_id.to_owned(),
        service: service.to_owned(),
    };
    if shard.shared.messages[target]
        .send(ShardMessage::Handoff(handoff))
        .is_ok()
    {
        shard.shared.stats.handoffs.increment();
    }
}

/// Picks the next accepting session of `gateway_id` on this shard, round robin.
fn pick_session<R: Runtime>(shard: &Shard<R>, gateway_id: &str) -> Option<Rc<Session>> {
    let sessions = shard.sessions.borrow();
    let list = sessions.get(gateway_id)?;
    let start = shard.next_session.get();
    shard.next_session.set(start.wrapping_add(1));
    (0..list.len())
        .map(|offset| &list[(start + offset) % list.len()].session)
        .find(|session| session.is_accepting())
        .cloned()
}
