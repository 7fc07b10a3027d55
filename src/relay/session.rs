//! One multiplexed session: the shared [`Session`] state that stream tasks use, and the
//! driver task that moves bytes between the socket, rustls and the mux.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};

use super::tls::TlsIo;
use super::SessionError;
use crate::backend::Runtime;
use crate::protocol::frame::{GoAwayReason, ResetReason};
use crate::protocol::mux::{Event, Mux, MuxError, StreamRead};
use crate::protocol::timing::{Heartbeat, HeartbeatAction};

/// Plaintext read from rustls per step of the driver.
const PLAINTEXT_CHUNK: usize = 64 * 1024;

/// Reason a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Go-away was sent, every stream finished, and the session closed.
    Drained,
    /// The peer closed the TLS session.
    PeerClosed,
    /// Nothing arrived from the peer within the heartbeat timeout.
    HeartbeatTimeout,
    /// This side closed it, for example after the drain deadline.
    Closed,
}

/// State of one session shared by its driver and its stream tasks on the same shard.
pub struct Session {
    /// Identifier for logs, assigned by the Server.
    pub id: u64,
    inner: RefCell<Inner>,
}

struct Inner {
    mux: Mux,
    driver: Option<Waker>,
    readers: HashMap<u32, Waker>,
    writers: HashMap<u32, Waker>,
    draining: bool,
    close_requested: bool,
    ended: bool,
}

impl Session {
    pub fn new(id: u64, mux: Mux) -> Rc<Self> {
        Rc::new(Self {
            id,
            inner: RefCell::new(Inner {
                mux,
                driver: None,
                readers: HashMap::new(),
                writers: HashMap::new(),
                draining: false,
                close_requested: false,
                ended: false,
            }),
        })
    }

    /// Reports whether new streams may be opened on this session.
    pub fn is_accepting(&self) -> bool {
        let inner = self.inner.borrow();
        !inner.ended && !inner.draining && !inner.mux.go_away_received()
    }

    /// Reports whether the driver has stopped.
    pub fn is_ended(&self) -> bool {
        self.inner.borrow().ended
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.inner.borrow().mux.stream_count()
    }

    /// Opens a stream to `service`.
    pub fn open_stream(&self, service: &str) -> Result<u32, MuxError> {
        let mut inner = self.inner.borrow_mut();
        let id = inner.mux.open_stream(service)?;
        inner.wake_driver();
        Ok(id)
    }

    /// Sends go-away and closes the session once its streams have finished.
    pub fn drain(&self) {
        let mut inner = self.inner.borrow_mut();
        if !inner.draining {
            inner.draining = true;
            inner.mux.go_away(GoAwayReason::Shutdown);
        }
        inner.wake_driver();
    }

    /// Closes the session now; its streams end.
    pub fn close(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.close_requested = true;
        inner.wake_driver();
    }

    /// Waits for send capacity on stream `id`; `None` once the stream or session is gone.
    pub(crate) fn poll_capacity(&self, id: u32, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        let mut inner = self.inner.borrow_mut();
        if inner.ended || !inner.mux.is_send_open(id) {
            return Poll::Ready(None);
        }
        let capacity = inner.mux.send_capacity(id);
        if capacity > 0 {
            return Poll::Ready(Some(capacity));
        }
        inner.writers.insert(id, cx.waker().clone());
        Poll::Pending
    }

    /// Queues data accepted by [`Self::poll_capacity`].
    pub(crate) fn send(&self, id: u32, data: &[u8]) -> Result<usize, MuxError> {
        let mut inner = self.inner.borrow_mut();
        let sent = inner.mux.send_data(id, data)?;
        inner.wake_driver();
        Ok(sent)
    }

    /// Half-closes our direction of stream `id`.
    pub(crate) fn send_fin(&self, id: u32) -> Result<(), MuxError> {
        let mut inner = self.inner.borrow_mut();
        inner.mux.send_fin(id)?;
        inner.wake_driver();
        Ok(())
    }

    /// Reads data that arrived for stream `id`.
    pub(crate) fn poll_read(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<StreamRead> {
        let mut inner = self.inner.borrow_mut();
        let result = inner.mux.read(id, buf);
        match result {
            StreamRead::Pending if inner.ended => {
                Poll::Ready(StreamRead::Reset(ResetReason::SessionClosing))
            }
            StreamRead::Pending => {
                inner.readers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            _ => {
                // Reading may have queued a window update.
                if inner.mux.outbox_len() > 0 {
                    inner.wake_driver();
                }
                Poll::Ready(result)
            }
        }
    }

    /// Resets stream `id` and drops its wakers.
    pub(crate) fn reset(&self, id: u32, reason: ResetReason) {
        let mut inner = self.inner.borrow_mut();
        inner.mux.reset(id, reason);
        inner.readers.remove(&id);
        inner.writers.remove(&id);
        inner.wake_driver();
    }

    /// Forgets the wakers of a finished stream.
    pub(crate) fn forget(&self, id: u32) {
        let mut inner = self.inner.borrow_mut();
        inner.readers.remove(&id);
        inner.writers.remove(&id);
    }
}

impl Inner {
    fn wake_driver(&mut self) {
        if let Some(waker) = self.driver.take() {
            waker.wake();
        }
    }

    /// Wakes the stream tasks named by mux events; peer-opened streams go to `opened`.
    fn dispatch_events(&mut self, opened: &mut Vec<(u32, String)>) {
        while let Some(event) = self.mux.poll_event() {
            match event {
                Event::Opened { id, service } => opened.push((id, service)),
                Event::Readable(id) => {
                    if let Some(waker) = self.readers.remove(&id) {
                        waker.wake();
                    }
                }
                Event::Writable(id) => {
                    if let Some(waker) = self.writers.remove(&id) {
                        waker.wake();
                    }
                }
                Event::Pong(_) => {}
                Event::GoAway {
                    last_stream_id,
                    reason,
                } => {
                    tracing::info!(last_stream_id, %reason, "peer sent go-away");
                }
            }
        }
    }

    /// Marks the session ended and wakes every stream task so it can finish.
    fn end(&mut self) {
        self.ended = true;
        for (_, waker) in self.readers.drain().chain(self.writers.drain()) {
            waker.wake();
        }
    }
}

/// Heartbeat timer of the driver, re-armed only when it fires or must fire earlier, so
/// that traffic does not allocate a new timer per read.
struct Timer<R: Runtime> {
    runtime: R,
    deadline: Instant,
    sleep: Pin<Box<dyn Future<Output = ()>>>,
}

impl<R: Runtime> Timer<R> {
    fn new(runtime: R, deadline: Instant) -> Self {
        let sleep = Box::pin(runtime.sleep(deadline.saturating_duration_since(Instant::now())));
        Self {
            runtime,
            deadline,
            sleep,
        }
    }

    fn arm(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.sleep = Box::pin(
            self.runtime
                .sleep(deadline.saturating_duration_since(Instant::now())),
        );
    }
}

/// Runs a session until it ends.
///
/// `pending` contains plaintext that arrived with the last handshake message. `on_open` is
/// called for every stream the peer opens.
pub async fn drive<R, T>(
    runtime: R,
    mut io: TlsIo<T>,
    session: Rc<Session>,
    pending: Vec<u8>,
    heartbeat: (Duration, Duration),
    mut on_open: impl FnMut(u32, String),
) -> Result<SessionEnd, SessionError>
where
    R: Runtime,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let now = Instant::now();
    let mut heartbeat = Heartbeat::new(heartbeat.0, heartbeat.1, now);
    let mut timer = Timer::new(runtime, heartbeat.next_deadline());
    let mut plaintext = vec![0u8; PLAINTEXT_CHUNK].into_boxed_slice();
    let mut opened = Vec::new();
    let mut ping_sequence = 0u64;

    let result = {
        let mut inner = session.inner.borrow_mut();
        inner.mux.handle_input(&pending).map_err(SessionError::from)
    };

    let result = match result {
        Err(error) => Err(error),
        Ok(()) => {
            poll_fn(|cx| {
                poll_session(
                    cx,
                    &mut io,
                    &session,
                    &mut heartbeat,
                    &mut timer,
                    &mut plaintext,
                    &mut opened,
                    &mut ping_sequence,
                    &mut on_open,
                )
            })
            .await
        }
    };

    session.inner.borrow_mut().end();
    if !matches!(result, Ok(SessionEnd::PeerClosed)) {
        io.close().await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn poll_session<T: AsyncRead + AsyncWrite + Unpin, R: Runtime>(
    cx: &mut Context<'_>,
    io: &mut TlsIo<T>,
    session: &Session,
    heartbeat: &mut Heartbeat,
    timer: &mut Timer<R>,
    plaintext: &mut [u8],
    opened: &mut Vec<(u32, String)>,
    ping_sequence: &mut u64,
    on_open: &mut impl FnMut(u32, String),
) -> Poll<Result<SessionEnd, SessionError>> {
    loop {
        let mut progress = false;

        // Socket to rustls to mux.
        let mut eof = false;
        match io.poll_fill(cx) {
            Poll::Ready(Ok(true)) => {
                heartbeat.on_receive(Instant::now());
                progress = true;
            }
            Poll::Ready(Ok(false)) => eof = true,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        loop {
            match io.read_plaintext(plaintext)? {
                Some(0) => return Poll::Ready(Ok(SessionEnd::PeerClosed)),
                Some(n) => {
                    let mut inner = session.inner.borrow_mut();
                    inner.mux.handle_input(&plaintext[..n])?;
                    inner.dispatch_events(opened);
                }
                None => break,
            }
        }
        for (id, service) in opened.drain(..) {
            on_open(id, service);
        }
        if eof {
            return Poll::Ready(Err(SessionError::PeerClosed));
        }

        // Local requests.
        {
            let inner = session.inner.borrow_mut();
            if inner.close_requested {
                return Poll::Ready(Ok(SessionEnd::Closed));
            }
            if inner.draining && inner.mux.stream_count() == 0 && inner.mux.outbox_len() == 0 {
                return Poll::Ready(Ok(SessionEnd::Drained));
            }
        }

        // Heartbeat.
        if timer.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match heartbeat.poll(now) {
                HeartbeatAction::Dead => return Poll::Ready(Ok(SessionEnd::HeartbeatTimeout)),
                HeartbeatAction::SendPing => {
                    *ping_sequence += 1;
                    session.inner.borrow_mut().mux.ping(*ping_sequence);
                }
                HeartbeatAction::Wait => {}
            }
            timer.arm(heartbeat.next_deadline());
            progress = true;
        } else if heartbeat.next_deadline() < timer.deadline {
            timer.arm(heartbeat.next_deadline());
            progress = true;
        }

        // Mux to rustls.
        {
            let mut inner = session.inner.borrow_mut();
            let outbox = inner.mux.outbox();
            if !outbox.is_empty() {
                let taken = io.write_plaintext(outbox)?;
                if taken > 0 {
                    inner.mux.consume_outbox(taken);
                    inner.dispatch_events(opened);
                    progress = true;
                }
            }
        }

        // rustls to socket.
        if let Poll::Ready(Err(error)) = io.poll_flush(cx) {
            return Poll::Ready(Err(error));
        }

        if !progress {
            let mut inner = session.inner.borrow_mut();
            match &inner.driver {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => inner.driver = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
    }
}
