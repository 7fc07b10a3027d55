//! Runtime backends. A backend performs I/O and spawns tasks; everything else (TLS, the
//! handshake, the relay loops) is shared code in [`crate::relay`], [`crate::agent`] and
//! [`crate::server`], generic over [`Runtime`].
//!
//! Every backend runs one shard per thread. A shard's tasks, sessions, buffers and
//! listeners never leave its thread, so nothing here needs `Send`.

#[cfg(target_os = "linux")]
pub mod glommio;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
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

/// Runs `shard_main` on `shards` threads of the io_uring backend and waits for them.
pub fn run_shards<F, Fut>(shards: usize, name: &str, shard_main: F) -> anyhow::Result<()>
where
    F: Fn(RuntimeHandle) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    #[cfg(target_os = "linux")]
    {
        glommio::run(shards, name, shard_main)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (shards, name, shard_main);
        anyhow::bail!(
            "this platform has no io_uring backend and the tokio backend is not built yet"
        )
    }
}

/// The backend the binaries run on.
#[cfg(target_os = "linux")]
pub type RuntimeHandle = glommio::Glommio;

/// Installs a SIGINT/SIGTERM handler and returns the receiver every shard watches: it
/// disconnects on the first signal. A second signal exits at once.
pub fn install_shutdown_handler() -> anyhow::Result<flume::Receiver<()>> {
    let (sender, receiver) = flume::bounded::<()>(1);
    let sender = std::sync::Mutex::new(Some(sender));
    ctrlc::set_handler(move || {
        let mut sender = sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sender.take().is_none() {
            eprintln!("second signal received; exiting without draining");
            std::process::exit(130);
        }
        tracing::info!("shutdown requested; draining sessions");
    })
    .map_err(|error| anyhow::anyhow!("cannot install the signal handler: {error}"))?;
    Ok(receiver)
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
