//! The portable backend: one current-thread tokio runtime with a `LocalSet` per shard. It
//! runs on macOS and Windows, and on Linux hosts where io_uring is unavailable.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::Runtime;

/// Handle to the current tokio shard.
#[derive(Clone, Debug)]
pub struct Tokio {
    shard: usize,
}

impl Runtime for Tokio {
    type Tcp = Compat<TcpStream>;
    type Listener = TcpListener;

    fn shard(&self) -> usize {
        self.shard
    }

    fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        tokio::task::spawn_local(future);
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + 'static {
        tokio::time::sleep(duration)
    }

    // The returned futures must not borrow `self`, which `async fn` would do.
    #[allow(clippy::manual_async_fn)]
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Tcp>> + 'static {
        async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream.compat())
        }
    }

    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::from_std(super::reuse_port_listener(addr)?.into())
    }

    #[allow(clippy::manual_async_fn)]
    fn accept<'a>(
        &self,
        listener: &'a TcpListener,
    ) -> impl Future<Output = io::Result<(Self::Tcp, SocketAddr)>> + 'a {
        async move {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok((stream.compat(), peer))
        }
    }

    fn adopt(&self, stream: std::net::TcpStream) -> io::Result<Self::Tcp> {
        stream.set_nonblocking(true)?;
        Ok(TcpStream::from_std(stream)?.compat())
    }

    fn release(&self, stream: Self::Tcp) -> io::Result<std::net::TcpStream> {
        stream.into_inner().into_std()
    }

    fn abort(&self, stream: Self::Tcp) {
        if let Err(error) =
            socket2::SockRef::from(stream.get_ref()).set_linger(Some(Duration::ZERO))
        {
            tracing::debug!(%error, "cannot set SO_LINGER for a reset");
        }
    }
}

/// Runs `shard_main` on `shards` threads, each with its own current-thread runtime, and
/// waits for all of them to return.
///
/// NOTE: shard threads are not pinned to CPUs, unlike the io_uring backend's.
pub fn run<F, Fut>(shards: usize, name: &str, shard_main: F) -> anyhow::Result<()>
where
    F: Fn(Tokio) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut handles = Vec::with_capacity(shards);
    for shard in 0..shards {
        let shard_main = shard_main.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| anyhow::anyhow!("cannot start tokio shard {shard}: {error}"))?;
        let handle = std::thread::Builder::new()
            .name(format!("{name}-{shard}"))
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, shard_main(Tokio { shard }));
            })
            .map_err(|error| anyhow::anyhow!("cannot start tokio shard {shard}: {error}"))?;
        handles.push(handle);
    }

    for (shard, handle) in handles.into_iter().enumerate() {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("tokio shard {shard} panicked"))?;
    }
    Ok(())
}
