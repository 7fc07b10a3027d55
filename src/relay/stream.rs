//! The stream task: relays one TCP connection (an entry client on the Server, a private
//! service on the Agent) to one mux stream, both directions in a single task.

use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use super::{BufferPool, PooledBuffer, Session};
use crate::protocol::frame::ResetReason;
use crate::protocol::mux::StreamRead;

/// Reason a stream ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Both directions finished with FIN.
    Finished,
    /// The peer reset the stream.
    ResetByPeer(ResetReason),
    /// This side reset it after a socket error.
    ResetLocally(ResetReason),
    /// The session ended first.
    SessionEnded,
}

/// Byte counts of a finished stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamStats {
    /// Bytes read from the TCP connection and sent to the peer.
    pub sent: u64,
    /// Bytes received from the peer and written to the TCP connection.
    pub received: u64,
}

/// TCP to mux: wait for credit, read at most that much, queue it; EOF becomes FIN.
struct Upstream {
    buffer: PooledBuffer,
    done: bool,
}

/// Mux to TCP: copy buffered data out, write it; FIN becomes a TCP write shutdown.
struct Downstream {
    buffer: PooledBuffer,
    start: usize,
    end: usize,
    done: bool,
}

/// Relays `tcp` to stream `id` of `session` until both directions finish or either side
/// resets, then returns the connection: after any end but [`StreamEnd::Finished`] the
/// caller closes it with a reset ([`crate::backend::Runtime::abort`]), so that a broken
/// transfer never looks complete.
pub async fn relay<T: AsyncRead + AsyncWrite + Unpin>(
    session: Rc<Session>,
    id: u32,
    mut tcp: T,
    pool: Rc<BufferPool>,
) -> (StreamEnd, StreamStats, T) {
    let mut up = Upstream {
        buffer: pool.take(),
        done: false,
    };
    let mut down = Downstream {
        buffer: pool.take(),
        start: 0,
        end: 0,
        done: false,
    };
    let mut stats = StreamStats::default();

    let end = poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(end) = poll_upstream(cx, &session, id, &mut tcp, &mut up, &mut stats)
            {
                return Poll::Ready(end);
            }
        }
        if !down.done {
            if let Poll::Ready(end) =
                poll_downstream(cx, &session, id, &mut tcp, &mut down, &mut stats)
            {
                return Poll::Ready(end);
            }
        }
        if up.done && down.done {
            return Poll::Ready(StreamEnd::Finished);
        }
        Poll::Pending
    })
    .await;

    if !matches!(end, StreamEnd::Finished) {
        // A no-op when the mux already dropped the stream.
        session.reset(id, ResetReason::Cancelled);
    }
    session.forget(id);
    (end, stats, tcp)
}

fn poll_upstream<T: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    session: &Session,
    id: u32,
    tcp: &mut T,
    up: &mut Upstream,
    stats: &mut StreamStats,
) -> Poll<StreamEnd> {
    loop {
        let capacity = match session.poll_capacity(id, cx) {
            Poll::Ready(Some(capacity)) => capacity,
            // The reader side reports why; here the direction just stops.
            Poll::Ready(None) => {
                up.done = true;
                return Poll::Pending;
            }
            Poll::Pending => return Poll::Pending,
        };
        let limit = capacity.min(up.buffer.len());
        let n = match Pin::new(&mut *tcp).poll_read(cx, &mut up.buffer[..limit]) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "stream read failed");
                session.reset(id, ResetReason::TargetError);
                return Poll::Ready(StreamEnd::ResetLocally(ResetReason::TargetError));
            }
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            up.done = true;
            let _ = session.send_fin(id);
            return Poll::Pending;
        }
        if session.send(id, &up.buffer[..n]).is_err() {
            up.done = true;
            return Poll::Pending;
        }
        stats.sent += n as u64;
    }
}

fn poll_downstream<T: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    session: &Session,
    id: u32,
    tcp: &mut T,
    down: &mut Downstream,
    stats: &mut StreamStats,
) -> Poll<StreamEnd> {
    loop {
        if down.start < down.end {
            match Pin::new(&mut *tcp).poll_write(cx, &down.buffer[down.start..down.end]) {
                Poll::Ready(Ok(n)) => {
                    down.start += n;
                    stats.received += n as u64;
                    continue;
                }
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "stream write failed");
                    session.reset(id, ResetReason::TargetError);
                    return Poll::Ready(StreamEnd::ResetLocally(ResetReason::TargetError));
                }
                Poll::Pending => return Poll::Pending,
            }
        }

        match session.poll_read(id, cx, &mut down.buffer) {
            Poll::Ready(StreamRead::Data(n)) => {
                down.start = 0;
                down.end = n;
            }
            Poll::Ready(StreamRead::Fin) => {
                // Half-close: the peer finished sending, so finish our TCP write side too.
                if let Poll::Ready(Err(error)) = Pin::new(&mut *tcp).poll_close(cx) {
                    tracing::debug!(%error, "stream shutdown failed");
                }
                down.done = true;
                return Poll::Pending;
            }
            Poll::Ready(StreamRead::Reset(ResetReason::SessionClosing)) => {
                return Poll::Ready(StreamEnd::SessionEnded)
            }
            Poll::Ready(StreamRead::Reset(reason)) => {
                return Poll::Ready(StreamEnd::ResetByPeer(reason))
            }
            Poll::Ready(StreamRead::Closed) => return Poll::Ready(StreamEnd::SessionEnded),
            Poll::Ready(StreamRead::Pending) | Poll::Pending => return Poll::Pending,
        }
    }
}
