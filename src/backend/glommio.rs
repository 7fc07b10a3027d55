//! The io_uring backend: one glommio `LocalExecutor` per shard, each pinned to a CPU.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use glommio::{CpuSet, LocalExecutorBuilder, Placement};

use super::Runtime;

/// Memory glommio registers with io_uring for its file I/O buffers. The gateway does no
/// file I/O through glommio, so this stays small to fit the default `RLIMIT_MEMLOCK`.
const IO_MEMORY: usize = 512 * 1024;

/// Handle to the current glommio shard.
#[derive(Clone, Debug)]
pub struct Glommio {
    shard: usize,
}

impl Runtime for Glommio {
    type Tcp = TcpStream;
    type Listener = TcpListener;

    fn shard(&self) -> usize {
        self.shard
    }

    fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        glommio::spawn_local(future).detach();
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + 'static {
        glommio::timer::sleep(duration)
    }

    // The returned futures must not borrow `self`, which `async fn` would do.
    #[allow(clippy::manual_async_fn)]
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + 'static {
        async move {
            let stream = TcpStream::connect(addr).await.map_err(io::Error::from)?;
            stream.set_nodelay(true).map_err(io::Error::from)?;
            Ok(stream)
        }
    }

    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = super::reuse_port_listener(addr)?;
        // SAFETY: `into_raw_fd` hands over sole ownership of a bound, listening socket.
        Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
    }

    #[allow(clippy::manual_async_fn)]
    fn accept<'a>(
        &self,
        listener: &'a TcpListener,
    ) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + 'a {
        async move {
            let stream = listener.accept().await.map_err(io::Error::from)?;
            stream.set_nodelay(true).map_err(io::Error::from)?;
            let peer = stream.peer_addr().map_err(io::Error::from)?;
            Ok((stream, peer))
        }
    }

    fn adopt(&self, stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        // SAFETY: `into_raw_fd` hands over sole ownership of an open, connected socket.
        Ok(unsafe { TcpStream::from_raw_fd(stream.into_raw_fd()) })
    }

    fn release(&self, stream: TcpStream) -> io::Result<std::net::TcpStream> {
        // glommio cannot give up its descriptor, so duplicate it; dropping the glommio stream
        // then closes only the original descriptor, not the connection.
        // SAFETY: `dup` on a descriptor this stream owns; the result is checked below.
        let duplicate = unsafe { libc::dup(stream.as_raw_fd()) };
        if duplicate < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(stream);
        // SAFETY: `duplicate` is a fresh descriptor owned by nobody else.
        Ok(unsafe { std::net::TcpStream::from_raw_fd(duplicate) })
    }

    fn abort(&self, stream: TcpStream) {
        if let Err(error) = Self::set_linger_zero(&stream) {
            tracing::debug!(%error, "cannot set SO_LINGER for a reset");
        }
    }
}

impl Glommio {
    fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
        // SAFETY: the descriptor stays open for the duration of the borrow because `stream`
        // owns it and outlives this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO))
    }
}

/// Runs `shard_main` on `shards` pinned executors and waits for all of them to return.
pub fn run<F, Fut>(shards: usize, name: &str, shard_main: F) -> anyhow::Result<()>
where
    F: Fn(Glommio) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    raise_memlock_limit();
    let cpus: Vec<usize> = CpuSet::online()
        .map(|set| set.into_iter().map(|location| location.cpu).collect())
        .unwrap_or_default();

    let mut handles = Vec::with_capacity(shards);
    for shard in 0..shards {
        let placement = match cpus.is_empty() {
            true => Placement::Unbound,
            false => Placement::Fixed(cpus[shard % cpus.len()]),
        };
        let shard_main = shard_main.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("{name}-{shard}"))
            .io_memory(IO_MEMORY)
            .spawn(move || shard_main(Glommio { shard }))
            .map_err(|error| anyhow::anyhow!("cannot start io_uring shard {shard}: {error}"))?;
        handles.push(handle);
    }

    for (shard, handle) in handles.into_iter().enumerate() {
        handle
            .join()
            .map_err(|error| anyhow::anyhow!("io_uring shard {shard} failed: {error}"))?;
    }
    Ok(())
}

/// Raises the soft `RLIMIT_MEMLOCK` to the hard limit; io_uring rings count against it on
/// kernels before 5.12.
fn raise_memlock_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
        }
    }
}

/// Checks that io_uring and a glommio executor can start on this host.
pub fn probe() -> Result<(), String> {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup writes at most `sizeof(struct io_uring_params)` (120 bytes)
    // into `params`; a returned descriptor is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map(|value| value.trim().to_owned())
            .unwrap_or_default();
        return Err(match error.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring support (ENOSYS)".into(),
            Some(libc::EPERM) if disabled == "1" || disabled == "2" => {
                format!("kernel.io_uring_disabled is {disabled}, so io_uring_setup returned EPERM")
            }
            Some(libc::EPERM) => {
                "io_uring_setup was denied with EPERM, as a seccomp profile such as Docker's default does".into()
            }
            _ => format!("io_uring_setup failed: {error}"),
        });
    }
    // SAFETY: `fd` is a descriptor this function just received and owns.
    unsafe { libc::close(fd as i32) };

    raise_memlock_limit();
    let started = std::thread::spawn(|| {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(IO_MEMORY)
            .make()
            .map(drop)
            .map_err(|error| error.to_string())
    })
    .join();
    match started {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("glommio could not start an executor: {error}")),
        Err(_) => Err("glommio panicked while starting an executor".into()),
    }
}
