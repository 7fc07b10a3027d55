//! Runtime backends. A backend performs I/O and spawns tasks; everything else (TLS, the
//! handshake, the relay loops) is shared code in [`crate::relay`], [`crate::agent`] and
//! [`crate::server`], generic over [`Runtime`].
//!
//! Every backend runs one shard per thread. A shard's tasks, sessions, buffers and
//! listeners never leave its thread, so nothing here needs `Send`.

#[cfg(target_os = "linux")]
pub mod glommio;
pub mod tokio;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

/// I/O and task primitives of one shard.
pub trait Runtime: Clone + 'static {
    /// A connected TCP stream.
    type Tcp: AsyncRead + AsyncWrite + Unpin + 'static;
    /// A listening TCP socket bound with `SO_REUSEPORT`, so every shard can bind the address.
    type Listener: 'static;

    /// Index of this shard, from 0.
    fn shard(&self) -> usize;

    /// Runs `future` as a task of this shard.
    fn spawn(&self, future: impl Future<Output = ()> + 'static);

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + 'static;

    /// Opens a TCP connection with `TCP_NODELAY` set.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Tcp>> + 'static;

    /// Binds a listener with `SO_REUSEPORT` set.
    fn listen(&self, addr: SocketAddr) -> io::Result<Self::Listener>;

    /// Accepts the next connection with `TCP_NODELAY` set, and returns its peer address.
    fn accept<'a>(
        &self,
        listener: &'a Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Tcp, SocketAddr)>> + 'a;

    /// Takes over a connection handed over from another shard.
    fn adopt(&self, stream: std::net::TcpStream) -> io::Result<Self::Tcp>;

    /// Releases a connection so that another shard can adopt it.
    fn release(&self, stream: Self::Tcp) -> io::Result<std::net::TcpStream>;

    /// Closes a connection with a TCP reset instead of a FIN, so that the peer can tell
    /// that the transfer broke off rather than finished.
    fn abort(&self, stream: Self::Tcp);
}

/// Backlog of every listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds a non-blocking listener with `SO_REUSEADDR` (so sockets in TIME_WAIT do not block
/// a restart) and `SO_REUSEPORT` (so every shard binds the same address).
pub fn reuse_port_listener(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};

    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Checks that nothing else listens on `addr`: binds it without `SO_REUSEPORT`, which
/// fails while any other socket listens there, and closes it again.
pub fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};

    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1)
}

/// Runs `future` with a time limit; `None` when the limit passed first.
pub async fn timeout<R: Runtime, T>(
    runtime: &R,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let sleep = runtime.sleep(limit);
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep.await;
        None
    })
    .await
}

/// The backend requested in a config or on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// io_uring where the host allows it, tokio otherwise.
    #[default]
    Auto,
    /// io_uring (glommio); starting fails where it is unavailable.
    #[value(name = "io_uring")]
    IoUring,
    /// tokio, on every platform.
    Tokio,
}

impl BackendChoice {
    /// Parses the config spelling: `auto`, `io_uring` or `tokio`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "auto" => Some(Self::Auto),
            "io_uring" => Some(Self::IoUring),
            "tokio" => Some(Self::Tokio),
            _ => None,
        }
    }
}

/// A backend that can run shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Tokio,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::IoUring => "io_uring",
            Self::Tokio => "tokio",
        })
    }
}

/// Chooses the backend for `choice`; returns it with the reason, for the startup log.
pub fn select(choice: BackendChoice) -> anyhow::Result<(Backend, String)> {
    match choice {
        BackendChoice::Tokio => Ok((Backend::Tokio, "runtime.backend is tokio".into())),
        BackendChoice::IoUring => match probe_io_uring() {
            Ok(()) => Ok((Backend::IoUring, "runtime.backend is io_uring".into())),
            Err(reason) => anyhow::bail!(
                "runtime.backend is io_uring, but io_uring is unavailable on this host: {reason}; \
                 set runtime.backend to auto or tokio (or pass --backend tokio)"
            ),
        },
        BackendChoice::Auto => match probe_io_uring() {
            Ok(()) => Ok((Backend::IoUring, "io_uring is available".into())),
            Err(reason) => Ok((
                Backend::Tokio,
                format!("io_uring is unavailable ({reason})"),
            )),
        },
    }
}

/// Checks that io_uring works here: the `io_uring_setup` system call, then a glommio
/// executor with the settings the shards use (locked memory included).
pub fn probe_io_uring() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        self::glommio::probe()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("io_uring exists only on Linux".into())
    }
}

/// The body of a shard, generic over the backend that runs it.
pub trait ShardMain: Send + Sync + 'static {
    /// Runs one shard until it stops.
    fn run<R: Runtime>(
        self: std::sync::Arc<Self>,
        runtime: R,
    ) -> impl Future<Output = ()> + 'static;
}

/// Runs `main` on `shards` threads of `backend` and waits for all of them.
pub fn launch<M: ShardMain>(
    backend: Backend,
    shards: usize,
    name: &str,
    main: std::sync::Arc<M>,
) -> anyhow::Result<()> {
    match backend {
        #[cfg(target_os = "linux")]
        Backend::IoUring => self::glommio::run(shards, name, move |runtime| {
            std::sync::Arc::clone(&main).run(runtime)
        }),
        #[cfg(not(target_os = "linux"))]
        Backend::IoUring => anyhow::bail!("io_uring exists only on Linux"),
        Backend::Tokio => self::tokio::run(shards, name, move |runtime| {
            std::sync::Arc::clone(&main).run(runtime)
        }),
    }
}

/// Whether every shard can bind the same listening address and the kernel spreads
/// connections across them (`SO_REUSEPORT` on Linux). Elsewhere only shard 0 listens and
/// connections reach other shards by handoff.
pub const SHARED_LISTENERS: bool = cfg!(target_os = "linux");

/// Installs a SIGINT/SIGTERM handler and returns the receiver every shard watches: it
/// disconnects on the first signal. A second signal exits at once.
///
/// With `stop_file`, the file appearing counts as the first signal too. Windows gives a
/// program started in the background no console signal, so `stop.bat` creates the file
/// instead. A stop file left from before this start is removed first.
pub fn install_shutdown_handler(stop_file: Option<PathBuf>) -> anyhow::Result<flume::Receiver<()>> {
    let (sender, receiver) = flume::bounded::<()>(1);
    let sender = Arc::new(Mutex::new(Some(sender)));
    let on_signal = Arc::clone(&sender);
    ctrlc::set_handler(move || {
        let mut sender = on_signal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sender.is_none() {
            eprintln!("second signal received; exiting without draining");
            std::process::exit(130);
        }
        tracing::info!("shutdown requested; draining sessions");
        // Dropping the sender wakes every shard.
        sender.take();
    })
    .map_err(|error| anyhow::anyhow!("cannot install the signal handler: {error}"))?;

    if let Some(path) = stop_file {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(stop_file = %path.display(), "removed a stop file left from an earlier run")
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => anyhow::bail!(
                "cannot remove the old stop file {}: {error}; delete it by hand and start again",
                path.display()
            ),
        }
        std::thread::Builder::new()
            .name("ipaas-stop-file".into())
            .spawn(move || watch_stop_file(&path, &sender))?;
    }
    Ok(receiver)
}

/// Checks every 200 ms whether `path` exists; when it does, removes it and drops `sender`
/// as a first signal would.
fn watch_stop_file(path: &Path, sender: &Mutex<Option<flume::Sender<()>>>) {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !path.exists() {
            continue;
        }
        let _ = std::fs::remove_file(path);
        let mut sender = sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sender.take().is_some() {
            tracing::info!(stop_file = %path.display(), "stop file found; draining sessions");
        }
        return;
    }
}

/// Returns a shard-local trigger that fires when `signal` disconnects.
pub fn shutdown_trigger<R: Runtime>(
    runtime: &R,
    signal: flume::Receiver<()>,
) -> std::rc::Rc<crate::relay::Trigger> {
    let trigger = crate::relay::Trigger::new();
    let fired = std::rc::Rc::clone(&trigger);
    runtime.spawn(async move {
        while signal.recv_async().await.is_ok() {}
        fired.fire();
    });
    trigger
}
