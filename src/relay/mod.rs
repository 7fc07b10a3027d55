//! Session and stream drivers shared by every backend and both roles.
//!
//! A session is one TLS connection carrying a [`Mux`](crate::protocol::mux::Mux). Its driver
//! task ([`session::drive`]) moves bytes between the socket, rustls and the mux; each stream
//! is one more task ([`stream::relay`]) that moves bytes between a TCP connection and the
//! mux. All of them run on the shard that accepted or opened the connection.

pub mod session;
pub mod stream;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::protocol::frame::{FrameError, RejectReason};
use crate::protocol::handshake::HandshakeError;
use crate::protocol::mux::MuxError;

pub use session::{Session, SessionEnd};

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS failed, for example an untrusted certificate or a wrong ALPN protocol.
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// A frame could not be decoded.
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// A handshake message was invalid.
    #[error("invalid handshake message: {0}")]
    Handshake(#[from] HandshakeError),
    /// The multiplexer detected a protocol violation.
    #[error("protocol violation: {0}")]
    Mux(#[from] MuxError),
    /// The peer sent something the protocol does not allow at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The Server rejected the Agent.
    #[error("rejected by the Server ({reason}): {message}")]
    Rejected {
        reason: RejectReason,
        message: String,
    },
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// A step did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// A pool of fixed-size buffers owned by one shard, so the relay path does not allocate
/// per read.
pub struct BufferPool {
    size: usize,
    max_free: usize,
    free: RefCell<Vec<Box<[u8]>>>,
}

impl BufferPool {
    /// Creates a pool of `size`-byte buffers that keeps at most `max_free` idle ones.
    pub fn new(size: usize, max_free: usize) -> Rc<Self> {
        Rc::new(Self {
            size,
            max_free,
            free: RefCell::new(Vec::new()),
        })
    }

    /// Takes a buffer, allocating only when none is idle.
    pub fn take(self: &Rc<Self>) -> PooledBuffer {
        let buffer = self
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.size].into_boxed_slice());
        PooledBuffer {
            buffer: Some(buffer),
            pool: Rc::clone(self),
        }
    }

    /// Number of idle buffers.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

/// A buffer that returns to its pool when dropped.
pub struct PooledBuffer {
    buffer: Option<Box<[u8]>>,
    pool: Rc<BufferPool>,
}

impl std::ops::Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buffer.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buffer.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut free = self.pool.free.borrow_mut();
        if let Some(buffer) = self.buffer.take() {
            if free.len() < self.pool.max_free {
                free.push(buffer);
            }
        }
    }
}

/// A one-shot flag that tasks of one shard can wait for, such as "shutdown requested".
#[derive(Default)]
pub struct Trigger {
    fired: Cell<bool>,
    next_key: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Trigger {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Sets the flag and wakes every waiting task.
    pub fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Completes once the flag is set. A dropped wait leaves no waker behind.
    pub async fn wait(&self) {
        struct Wait<'a> {
            trigger: &'a Trigger,
            key: u64,
        }
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                self.trigger.waiters.borrow_mut().remove(&self.key);
            }
        }

        let key = self.next_key.get();
        self.next_key.set(key + 1);
        let wait = Wait { trigger: self, key };
        poll_fn(|cx| {
            if wait.trigger.fired.get() {
                return Poll::Ready(());
            }
            wait.trigger
                .waiters
                .borrow_mut()
                .insert(wait.key, cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Number of registered waiters, for leak checks.
    pub fn waiter_count(&self) -> usize {
        self.waiters.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn pool_reuses_buffers() {
        let pool = BufferPool::new(1024, 2);
        let first = pool.take();
        let address = first.as_ptr();
        drop(first);
        assert_eq!(pool.idle(), 1);
        let second = pool.take();
        assert_eq!(second.as_ptr(), address);
        assert_eq!(second.len(), 1024);
    }

    #[test]
    fn trigger_wakes_and_forgets_waiters() {
        let trigger = Trigger::new();
        let mut wait = Box::pin(trigger.wait());
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(trigger.waiter_count(), 1);
        drop(wait);
        assert_eq!(trigger.waiter_count(), 0);

        let mut wait = Box::pin(trigger.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        trigger.fire();
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn pool_caps_idle_buffers() {
        let pool = BufferPool::new(16, 2);
        let buffers: Vec<_> = (0..5).map(|_| pool.take()).collect();
        drop(buffers);
        assert_eq!(pool.idle(), 2);
    }
}
