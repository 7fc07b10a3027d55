//! Load generators for the flood test and the flood benchmark: unauthenticated junk on the
//! Server's Agent port from many loopback addresses, and one bulk stream through an entry
//! port whose throughput is sampled.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{free_port, openssl_keys, wait_for_log, Backends, Env, TestService};

/// Worker threads of a flood.
const WORKERS: usize = 4;

/// What a flood sends, and how fast.
#[derive(Debug, Clone)]
pub struct FloodSettings {
    pub target: SocketAddr,
    /// Number of source addresses, from 127.0.0.2 up.
    pub sources: u8,
    /// New connections per second over all workers, rotating over `kinds`.
    pub rate: u32,
    pub kinds: &'static [FloodKind],
    /// Maximum number of idle connections kept open. The oldest is closed to make room.
    pub idle_limit: usize,
    /// CA certificate that the TLS attempts trust.
    pub ca: PathBuf,
    /// The flood stops by itself after this long.
    pub max_duration: Duration,
}

/// A kind of connection a flood makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// Connects and sends nothing.
    Idle,
    /// Sends the first byte of a TLS record, then nothing.
    Partial,
    /// Sends bytes that are not TLS, then closes.
    Junk,
    /// A TLS handshake without a client certificate, which the Server rejects after doing
    /// its own part of the handshake.
    Tls,
}

/// Every kind of flood connection.
pub const ALL_KINDS: &[FloodKind] = &[FloodKind::Idle, FloodKind::Junk, FloodKind::Tls];

/// Outcomes of the connections a flood made.
#[derive(Debug, Default, Clone, Copy)]
pub struct FloodCounts {
    pub attempts: u64,
    /// TCP connections the Server accepted.
    pub connected: u64,
    /// TLS handshakes that the client side finished.
    pub tls_completed: u64,
}

impl std::ops::AddAssign for FloodCounts {
    fn add_assign(&mut self, other: Self) {
        self.attempts += other.attempts;
        self.connected += other.connected;
        self.tls_completed += other.tls_completed;
    }
}

/// A running flood. [`Flood::stop`] ends it and returns its counts.
pub struct Flood {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<FloodCounts>>,
}

impl Flood {
    pub fn start(settings: &FloodSettings) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tls = tls_config(&settings.ca);
        let workers = (0..WORKERS)
            .map(|worker| {
                let (settings, stop, tls) = (settings.clone(), Arc::clone(&stop), tls.clone());
                std::thread::spawn(move || flood_worker(worker, &settings, &stop, tls))
            })
            .collect();
        Self { stop, workers }
    }

    pub fn stop(self) -> FloodCounts {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = FloodCounts::default();
        for worker in self.workers {
            total += worker.join().expect("a flood worker panicked");
        }
        total
    }
}

fn tls_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn flood_worker(
    worker: usize,
    settings: &FloodSettings,
    stop: &AtomicBool,
    tls: Arc<rustls::ClientConfig>,
) -> FloodCounts {
    let interval = Duration::from_secs_f64(WORKERS as f64 / f64::from(settings.rate.max(1)));
    let deadline = Instant::now() + settings.max_duration;
    let mut next = Instant::now();
    let mut idle = VecDeque::new();
    let mut counts = FloodCounts::default();
    let mut index = worker;

    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // A worker that fell behind skips the slots it missed instead of bursting.
        next = (next + interval).max(now);

        let source = Ipv4Addr::new(127, 0, 0, 2 + (index % usize::from(settings.sources)) as u8);
        let kind = settings.kinds[index / WORKERS % settings.kinds.len()];
        index += WORKERS;
        counts.attempts += 1;
        let Some(mut tcp) = connect_from(source, settings.target) else {
            continue;
        };
        counts.connected += 1;
        match kind {
            FloodKind::Idle | FloodKind::Partial => {
                if kind == FloodKind::Partial {
                    let _ = tcp.write_all(b"\x16");
                }
                idle.push_back(tcp);
                if idle.len() > settings.idle_limit / WORKERS {
                    idle.pop_front();
                }
            }
            FloodKind::Junk => {
                let _ = tcp.write_all(b"\x16\x03\x01\x02\x00 this is not a ClientHello");
                let _ = tcp.shutdown(Shutdown::Both);
            }
            FloodKind::Tls => {
                if tls_attempt(tcp, &tls) {
                    counts.tls_completed += 1;
                }
            }
        }
    }
    counts
}

fn connect_from(source: Ipv4Addr, target: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
    socket
        .connect_timeout(&target.into(), Duration::from_secs(1))
        .ok()?;
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    Some(tcp)
}

/// Runs a TLS handshake without a client certificate and returns whether the client side
/// finished it. The Server rejects the missing certificate right after.
fn tls_attempt(mut tcp: TcpStream, config: &Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut tls) =
        rustls::ClientConnection::new(Arc::clone(config), "localhost".try_into().unwrap())
    else {
        return false;
    };
    let mut rounds = 0;
    while tls.is_handshaking() && rounds < 10 {
        if tls.complete_io(&mut tcp).is_err() {
            return false;
        }
        rounds += 1;
    }
    !tls.is_handshaking()
}

/// One connection through an entry port to a sink service, written to as fast as it goes
/// by a thread that stops by itself after `max_duration`.
pub struct BulkStream {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

impl BulkStream {
    /// Connects to `entry`, which must relay to a service that runs [`sink`] with
    /// `received` as its counter.
    pub fn start(entry: u16, received: Arc<AtomicU64>, max_duration: Duration) -> Self {
        let mut tcp = TcpStream::connect(("127.0.0.1", entry)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let chunk = vec![0x5a; 64 * 1024];
            let deadline = Instant::now() + max_duration;
            while !stopping.load(Ordering::SeqCst) && Instant::now() < deadline {
                if tcp.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = tcp.shutdown(Shutdown::Write);
        });
        Self {
            received,
            stop,
            writer: Some(writer),
        }
    }

    /// Measures the bytes per second the sink receives during the next `window`.
    pub fn rate(&self, window: Duration) -> f64 {
        let before = self.received.load(Ordering::SeqCst);
        let started = Instant::now();
        std::thread::sleep(window);
        let bytes = self.received.load(Ordering::SeqCst) - before;
        bytes as f64 / started.elapsed().as_secs_f64()
    }
}

impl Drop for BulkStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Reads and discards every byte until EOF, adding the count to `received`.
pub fn sink(mut stream: TcpStream, received: &AtomicU64) {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
}

/// A Server with gateway `gw`, whose service `sink` discards what it reads, and its first
/// Agent, `agent-1`, logged in.
pub struct SinkGateway {
    pub env: Env,
    /// Entry port of `sink`.
    pub entry: u16,
    pub private_key: PathBuf,
    pub service: TestService,
    /// Bytes the service has received.
    pub received: Arc<AtomicU64>,
}

impl SinkGateway {
    pub fn start(backends: Backends) -> Self {
        Self::start_with(backends, "")
    }

    /// Starts the gateway with `server_extra` added to the Server's config.
    pub fn start_with(backends: Backends, server_extra: &str) -> Self {
        let mut env = Env::new(backends);
        env.server_extra = server_extra.to_owned();
        let (private_key, public_key) = openssl_keys(&env.path("keys"), 2048);
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let service = TestService::start(move |stream| sink(stream, &counter));
        let entry = free_port();
        env.start_gateway(&public_key, "127.0.0.0/8", &[("sink", entry)]);
        let mut gateway = Self {
            env,
            entry,
            private_key,
            service,
            received,
        };
        gateway.start_agent("agent-1");
        wait_for_log(
            &gateway.env.server_log(),
            "Agent session established",
            Duration::from_secs(30),
        );
        gateway
    }

    /// Starts another Agent of `gw` and returns its folder.
    pub fn start_agent(&mut self, name: &str) -> PathBuf {
        let target = self.service.target();
        self.env
            .start_agent(name, "gw", &self.private_key, &[("sink", target)])
    }

    /// Returns the flood settings used with this gateway: every kind of connection from 100
    /// source addresses, at most 4,000 of them idle.
    pub fn flood(&self, rate: u32, max_duration: Duration) -> FloodSettings {
        FloodSettings {
            target: ([127, 0, 0, 1], self.env.agent_port).into(),
            sources: 100,
            rate,
            kinds: ALL_KINDS,
            idle_limit: 4000,
            ca: self.env.path("server/pki/ca.pem"),
            max_duration,
        }
    }

    /// Starts a [`BulkStream`] through the entry port.
    pub fn bulk_stream(&self, max_duration: Duration) -> BulkStream {
        BulkStream::start(self.entry, Arc::clone(&self.received), max_duration)
    }
}
