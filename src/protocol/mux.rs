//! Stream multiplexer of one TLS session after the handshake: stream table, flow control,
//! half-close, reset, ping and go-away.
//!
//! [`Mux`] performs no I/O. The session driver passes received bytes to
//! [`Mux::handle_input`], writes [`Mux::outbox`] to TLS, and reacts to [`Mux::poll_event`].
//! One `Mux` belongs to one session and is used only from the thread that runs it.
//!
//! Only the Server opens streams, with odd ids 1, 3, 5 and so on. Even ids are reserved.
//! Each direction of a stream has its own credit window, and all streams of a session
//! share a session window, so the bytes buffered for the application never exceed
//! `session_window` and those of one stream never exceed `stream_window`.

use std::collections::{HashMap, VecDeque};
use std::mem;

use super::frame::{
    self, flags, Frame, FrameError, FrameType, GoAwayReason, ResetReason, HEADER_LEN,
    MAX_PAYLOAD_LIMIT, MAX_STREAM_ID,
};
use super::handshake::{self, HandshakeError};

/// Maximum window size and send credit in bytes, 2^31 - 1.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Bytes that frames queued in reply to input (pongs, resets, window updates) may add to
/// the outbox beyond `max_outbox`. A peer that keeps sending without reading our replies
/// makes the outbox pass this and the session fail with [`MuxError::OutboxOverflow`].
const CONTROL_HEADROOM: usize = 256 * 1024;

/// Receive buffer capacity a stream keeps after its buffer drains. A stream whose reader
/// fell behind gives back the rest, so idle streams do not each hold a full window.
const RETAINED_RECV_CAPACITY: usize = 64 * 1024;

/// Side of the session that a multiplexer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Cloud side: opens streams.
    Server,
    /// Private-network side: accepts streams and relays them.
    Agent,
}

/// Limits of one multiplexer.
///
/// NOTE: both sides assume the peer uses the same values, because initial send credit is
/// taken from our own `stream_window` and `session_window`. The Welcome does not carry
/// them yet, so both ends must be configured alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxConfig {
    /// Receive window of each stream in bytes: the most the peer may send on a stream
    /// before the application reads. Default 256 KiB.
    pub stream_window: u32,
    /// Receive window of the session in bytes: the most buffered across all streams.
    /// Default 16 MiB.
    ///
    /// NOTE: streams whose readers stall keep their buffered bytes in this window, so
    /// about `session_window / stream_window` stalled streams block the others.
    pub session_window: u32,
    /// Maximum number of open streams. Default 8192.
    pub max_streams: u32,
    /// Maximum payload of a received or sent frame in bytes. Default 16 KiB.
    pub max_frame_payload: u32,
    /// Outbox size in bytes above which [`Mux::send_capacity`] returns 0. Default 512 KiB.
    pub max_outbox: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            stream_window: 256 * 1024,
            session_window: 16 * 1024 * 1024,
            max_streams: 8192,
            max_frame_payload: frame::DEFAULT_MAX_PAYLOAD,
            max_outbox: 512 * 1024,
        }
    }
}

impl MuxConfig {
    /// Checks every field against its allowed range.
    ///
    /// Windows: 1 KiB to [`MAX_WINDOW`]. Streams: 1 to 2^30, the number of odd stream ids.
    /// Frame payload: 1 KiB to [`MAX_PAYLOAD_LIMIT`]. Outbox: 1 KiB to 1 GiB.
    pub fn validate(&self) -> Result<(), MuxError> {
        check_range(
            "stream_window",
            self.stream_window.into(),
            1024,
            MAX_WINDOW.into(),
        )?;
        check_range(
            "session_window",
            self.session_window.into(),
            1024,
            MAX_WINDOW.into(),
        )?;
        check_range("max_streams", self.max_streams.into(), 1, 1 << 30)?;
        check_range(
            "max_frame_payload",
            self.max_frame_payload.into(),
            1024,
            MAX_PAYLOAD_LIMIT.into(),
        )?;
        let max_outbox = u64::try_from(self.max_outbox).unwrap_or(u64::MAX);
        check_range("max_outbox", max_outbox, 1024, 1 << 30)
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), MuxError> {
    if value < min || value > max {
        return Err(MuxError::InvalidConfig {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// Something the session driver must react to, from [`Mux::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The Server opened a stream to `service` (Agent only). The service name passed
    /// [`handshake::validate_name`] but may be unknown to the Agent.
    Opened {
        /// Stream id.
        id: u32,
        /// Requested service name.
        service: String,
    },
    /// Data, FIN or a reset arrived for the stream, so [`Mux::read`] has something to
    /// return. It is queued again only after a `read` call for that stream.
    Readable(u32),
    /// The stream had no send capacity and now has some, or it was reset.
    Writable(u32),
    /// A Ping we sent came back with this payload.
    Pong(u64),
    /// The peer sent go-away. No new streams will be opened on this session.
    GoAway {
        /// Highest stream id the peer had accepted (Agent) or opened (Server).
        last_stream_id: u32,
        /// Peer's reason.
        reason: GoAwayReason,
    },
}

/// Result of [`Mux::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRead {
    /// This many bytes were copied into the buffer.
    Data(usize),
    /// The peer half-closed and every byte has been read. Returned again on later reads
    /// until the stream is removed.
    Fin,
    /// The stream was reset, by the peer or because the peer broke a stream rule.
    /// Returned once, then the id reads as [`StreamRead::Closed`].
    Reset(ResetReason),
    /// Nothing to read yet.
    Pending,
    /// No such stream: never opened, already finished, or reset locally.
    Closed,
}

/// Stream multiplexer state of one session.
#[derive(Debug)]
pub struct Mux {
    role: Role,
    config: MuxConfig,
    streams: HashMap<u32, Stream>,
    /// Reset reasons not yet returned by [`Mux::read`], for streams already removed.
    resets: HashMap<u32, ResetReason>,
    events: VecDeque<Event>,
    /// Streams that saw zero send capacity, in the order they blocked.
    blocked: Vec<u32>,
    /// Start of a frame split across [`Mux::handle_input`] calls.
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    /// Bytes at the front of `outbox` already consumed by the caller.
    outbox_start: usize,
    /// Highest stream id opened so far (Server) or accepted from the peer (Agent). Lower
    /// odd ids that are not in `streams` are closed.
    last_stream_id: u32,
    /// Bytes we may still send across all streams.
    session_send_credit: u32,
    /// Bytes the peer may still send across all streams.
    session_recv_credit: u32,
    /// Bytes read or discarded since the last session window update.
    session_recv_unacked: u32,
    go_away_sent: bool,
    /// Lowest last stream id of the go-away frames received.
    go_away_received: Option<u32>,
}

/// State of one open stream.
#[derive(Debug)]
struct Stream {
    /// Received bytes not yet read. Its capacity is kept between frames.
    recv_buf: VecDeque<u8>,
    /// Bytes the peer may still send on this stream.
    recv_credit: u32,
    /// Bytes read since the last stream window update.
    recv_unacked: u32,
    /// The peer sent FIN.
    recv_fin: bool,
    /// The application read the FIN.
    fin_read: bool,
    /// A Readable event is queued and no read has happened since.
    readable_queued: bool,
    /// Bytes we may still send on this stream.
    send_credit: u32,
    /// We sent FIN.
    fin_sent: bool,
    /// Listed in `Mux::blocked`, waiting for send capacity.
    blocked: bool,
}

impl Stream {
    fn new(config: &MuxConfig) -> Self {
        Self {
            recv_buf: VecDeque::new(),
            recv_credit: config.stream_window,
            recv_unacked: 0,
            recv_fin: false,
            fin_read: false,
            readable_queued: false,
            send_credit: config.stream_window,
            fin_sent: false,
            blocked: false,
        }
    }
}

impl Mux {
    /// Creates the multiplexer of a session that has just finished its handshake.
    ///
    /// `config` should have passed [`MuxConfig::validate`].
    pub fn new(role: Role, config: MuxConfig) -> Self {
        Self {
            role,
            session_send_credit: config.session_window,
            session_recv_credit: config.session_window,
            config,
            streams: HashMap::new(),
            resets: HashMap::new(),
            events: VecDeque::new(),
            blocked: Vec::new(),
            inbox: Vec::new(),
            outbox: Vec::new(),
            outbox_start: 0,
            last_stream_id: 0,
            session_recv_unacked: 0,
            go_away_sent: false,
            go_away_received: None,
        }
    }

    /// Returns the role this multiplexer was created with.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Processes received bytes, which may end inside a frame.
    ///
    /// The incomplete end is kept and completed by later calls. An `Err` means the peer
    /// broke a session rule or ignores our replies, and the caller must close the session,
    /// optionally after [`Mux::go_away`] with [`GoAwayReason::ProtocolError`]. A stream
    /// rule broken by the peer resets only that stream.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), MuxError> {
        let mut rest = bytes;
        if !self.inbox.is_empty() {
            rest = self.complete_inbox(rest)?;
        }

        // Frames that arrive whole are processed in place, without a copy.
        while let Some((frame, used)) = frame::decode(rest, self.config.max_frame_payload)? {
            self.process_frame(&frame)?;
            rest = &rest[used..];
        }
        self.inbox.extend_from_slice(rest);

        let limit = self.config.max_outbox.saturating_add(CONTROL_HEADROOM);
        if self.outbox_len() > limit {
            return Err(MuxError::OutboxOverflow {
                len: self.outbox_len(),
                limit,
            });
        }
        Ok(())
    }

    /// Returns the next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Opens a stream to `service` and returns its id (Server only).
    pub fn open_stream(&mut self, service: &str) -> Result<u32, MuxError> {
        if self.role == Role::Agent {
            return Err(MuxError::AgentCannotOpen);
        }
        if self.go_away_sent {
            return Err(MuxError::GoAwaySent);
        }
        if let Some(last_stream_id) = self.go_away_received {
            return Err(MuxError::GoAwayReceived { last_stream_id });
        }
        handshake::validate_name("service name", service)
            .map_err(|source| MuxError::InvalidService { source })?;
        if self.streams.len() >= self.config.max_streams as usize {
            return Err(MuxError::TooManyStreams {
                open: self.streams.len(),
                max: self.config.max_streams,
            });
        }

        let id = match self.last_stream_id {
            0 => 1,
            last => last + 2,
        };
        if id > MAX_STREAM_ID {
            return Err(MuxError::StreamIdsExhausted);
        }

        self.last_stream_id = id;
        self.streams.insert(id, Stream::new(&self.config));
        frame::encode_frame(FrameType::Open, 0, id, service.as_bytes(), &mut self.outbox);
        Ok(id)
    }

    /// Returns how many bytes [`Mux::send_data`] would accept now for stream `id`.
    ///
    /// This is the smallest of the stream's send credit, the session's send credit and the
    /// room left in the outbox below `max_outbox`. It is 0 for a stream that cannot send
    /// (unknown, reset or FIN sent). When it is 0 for a stream that can send, a
    /// [`Event::Writable`] follows once capacity returns.
    pub fn send_capacity(&mut self, id: u32) -> usize {
        let room = self.outbox_room();
        let session_credit = self.session_send_credit;
        let Some(stream) = self.streams.get_mut(&id) else {
            return 0;
        };
        if stream.fin_sent {
            return 0;
        }

        let capacity = (stream.send_credit.min(session_credit) as usize).min(room);
        if capacity == 0 && !stream.blocked {
            stream.blocked = true;
            self.blocked.push(id);
        }
        capacity
    }

    /// Queues as much of `data` as the send capacity allows, as Data frames of at most
    /// `max_frame_payload` bytes, and returns how many bytes were queued.
    ///
    /// Returns `Ok(0)` when the capacity is 0, and a [`Event::Writable`] follows once it
    /// returns. The outbox may pass `max_outbox` by the frame headers.
    pub fn send_data(&mut self, id: u32, data: &[u8]) -> Result<usize, MuxError> {
        self.check_can_send(id)?;
        if data.is_empty() {
            return Ok(0);
        }

        let accepted = self.send_capacity(id).min(data.len());
        let max_chunk = self.config.max_frame_payload as usize;
        for chunk in data[..accepted].chunks(max_chunk) {
            frame::encode_frame(FrameType::Data, 0, id, chunk, &mut self.outbox);
        }

        // `accepted` is at most both credits, which are u32.
        let accepted_u32 = accepted as u32;
        self.session_send_credit -= accepted_u32;
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.send_credit -= accepted_u32;
        }
        Ok(accepted)
    }

    /// Half-closes our direction of stream `id` by queuing an empty Data frame with FIN.
    ///
    /// The peer's direction stays open. Flow control does not delay the FIN.
    pub fn send_fin(&mut self, id: u32) -> Result<(), MuxError> {
        self.check_can_send(id)?;
        frame::encode_frame(FrameType::Data, flags::FIN, id, &[], &mut self.outbox);

        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        stream.fin_sent = true;
        stream.blocked = false;
        if stream.fin_read {
            self.remove_stream(id);
        }
        Ok(())
    }

    /// Queues a Reset for stream `id` with `reason` and removes the stream. Does nothing
    /// for an unknown id.
    ///
    /// If the peer had already reset the stream, only the pending [`StreamRead::Reset`] is
    /// dropped and nothing is sent.
    pub fn reset(&mut self, id: u32, reason: ResetReason) {
        if self.remove_stream(id) {
            frame::encode_reset(id, reason, &mut self.outbox);
        } else {
            self.resets.remove(&id);
        }
    }

    /// Copies buffered bytes of stream `id` into `buf`.
    ///
    /// Reading returns credit to the peer. A stream WindowUpdate is queued once half the
    /// stream window was read since the last one, unless the peer already sent FIN. A
    /// session WindowUpdate is queued once half the session window was read or discarded.
    /// An empty `buf` returns `Data(0)` while bytes are buffered.
    pub fn read(&mut self, id: u32, buf: &mut [u8]) -> StreamRead {
        let Some(stream) = self.streams.get_mut(&id) else {
            return match self.resets.remove(&id) {
                Some(reason) => StreamRead::Reset(reason),
                None => StreamRead::Closed,
            };
        };
        stream.readable_queued = false;

        if !stream.recv_buf.is_empty() {
            let n = copy_out(&mut stream.recv_buf, buf);
            if stream.recv_buf.is_empty() && stream.recv_buf.capacity() > RETAINED_RECV_CAPACITY {
                stream.recv_buf.shrink_to(RETAINED_RECV_CAPACITY);
            }

            // `n` is at most the bytes buffered, which the stream window bounds.
            stream.recv_unacked += n as u32;
            if !stream.recv_fin
                && stream.recv_unacked >= update_threshold(self.config.stream_window)
            {
                let increment = mem::take(&mut stream.recv_unacked);
                stream.recv_credit += increment;
                frame::encode_window_update(id, increment, &mut self.outbox);
            }
            self.release_session_credit(n as u32);
            return StreamRead::Data(n);
        }

        if stream.recv_fin {
            stream.fin_read = true;
            if stream.fin_sent {
                self.remove_stream(id);
            }
            return StreamRead::Fin;
        }
        StreamRead::Pending
    }

    /// Returns the number of open streams, those not yet finished in both directions or
    /// reset.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Returns true if stream `id` is open and we have not sent FIN on it, so it can still
    /// send, possibly after waiting for capacity.
    pub fn is_send_open(&self, id: u32) -> bool {
        self.streams.get(&id).is_some_and(|stream| !stream.fin_sent)
    }

    /// Queues a Ping. The peer's reply arrives as [`Event::Pong`] with the same payload.
    pub fn ping(&mut self, payload: u64) {
        frame::encode_ping(0, payload, &mut self.outbox);
    }

    /// Queues a go-away frame, after which this side opens and accepts no new streams.
    ///
    /// Streams already open continue. The frame carries the highest stream id opened
    /// (Server) or accepted (Agent). Only the first call sends anything.
    pub fn go_away(&mut self, reason: GoAwayReason) {
        if self.go_away_sent {
            return;
        }
        self.go_away_sent = true;
        frame::encode_go_away(self.last_stream_id, reason, &mut self.outbox);
    }

    /// Returns true once a go-away frame arrived from the peer.
    pub fn go_away_received(&self) -> bool {
        self.go_away_received.is_some()
    }

    /// Returns true once [`Mux::go_away`] was called.
    pub fn go_away_sent(&self) -> bool {
        self.go_away_sent
    }

    /// Returns the bytes waiting to be written to TLS.
    pub fn outbox(&self) -> &[u8] {
        &self.outbox[self.outbox_start..]
    }

    /// Drops the first `n` bytes of the outbox after the caller wrote them to TLS.
    ///
    /// Streams blocked on a full outbox get [`Event::Writable`] once it has room. `n`
    /// above [`Mux::outbox_len`] is treated as the whole outbox.
    pub fn consume_outbox(&mut self, n: usize) {
        debug_assert!(
            n <= self.outbox_len(),
            "consumed {n} of {} bytes",
            self.outbox_len()
        );
        self.outbox_start += n.min(self.outbox_len());

        // Moving the rest forward only once it is under half the buffer keeps the cost of
        // a partial write proportional to the bytes written.
        if self.outbox_start == self.outbox.len() {
            self.outbox.clear();
            self.outbox_start = 0;
        } else if self.outbox_start > self.outbox.len() / 2 {
            self.outbox.drain(..self.outbox_start);
            self.outbox_start = 0;
        }
        self.wake_blocked();
    }

    /// Returns the number of bytes waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len() - self.outbox_start
    }

    fn outbox_room(&self) -> usize {
        self.config.max_outbox.saturating_sub(self.outbox_len())
    }

    /// Adds `bytes` to the inbox until it contains a whole frame, processes that frame, and
    /// returns the bytes that follow it.
    fn complete_inbox<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], MuxError> {
        let mut rest = bytes;
        if self.inbox.len() < HEADER_LEN {
            let take = (HEADER_LEN - self.inbox.len()).min(rest.len());
            self.inbox.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        let Some(header_bytes) = self.inbox.first_chunk::<HEADER_LEN>() else {
            return Ok(rest);
        };

        // Checking the header before buffering the payload stops an oversized frame early.
        let header = frame::decode_header(header_bytes, self.config.max_frame_payload)?;
        let total = HEADER_LEN + header.len as usize;
        let take = (total - self.inbox.len()).min(rest.len());
        self.inbox.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        if self.inbox.len() < total {
            return Ok(rest);
        }

        // The inbox is moved out while its frame is processed and then put back empty, so
        // its allocation is reused.
        let mut inbox = mem::take(&mut self.inbox);
        let frame = Frame {
            header,
            payload: &inbox[HEADER_LEN..],
        };
        let result = self.process_frame(&frame);
        inbox.clear();
        self.inbox = inbox;
        result.map(|()| rest)
    }

    fn process_frame(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        match frame.header.kind {
            FrameType::Data => self.on_data(frame),
            FrameType::Open => self.on_open(frame),
            FrameType::Reset => self.on_reset(frame),
            FrameType::WindowUpdate => self.on_window_update(frame),
            FrameType::Ping => self.on_ping(frame),
            FrameType::GoAway => self.on_go_away(frame),
            kind @ (FrameType::Hello
            | FrameType::Challenge
            | FrameType::Auth
            | FrameType::Welcome
            | FrameType::Reject) => Err(MuxError::HandshakeFrame { kind }),
        }
    }

    fn on_data(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        let id = frame.header.stream_id;
        self.check_stream_id(FrameType::Data, id)?;

        // Every Data frame counts against the session window, even one that is discarded.
        // The payload is at most max_frame_payload, so it fits a u32.
        let len = frame.payload.len() as u32;
        if len > self.session_recv_credit {
            return Err(MuxError::SessionFlowControl {
                stream_id: id,
                len,
                available: self.session_recv_credit,
            });
        }
        self.session_recv_credit -= len;

        let Some(stream) = self.streams.get_mut(&id) else {
            // The stream was closed or reset here. Its bytes are dropped and credited.
            self.release_session_credit(len);
            return Ok(());
        };

        let violation = if stream.recv_fin {
            Some(ResetReason::ProtocolError)
        } else if len > stream.recv_credit {
            Some(ResetReason::FlowControl)
        } else {
            None
        };
        if let Some(reason) = violation {
            self.release_session_credit(len);
            self.reset_for_peer_violation(id, reason);
            return Ok(());
        }

        stream.recv_credit -= len;
        stream.recv_buf.extend(frame.payload);
        let fin = frame.header.flags & flags::FIN != 0;
        if fin {
            stream.recv_fin = true;
        }
        if (len > 0 || fin) && !stream.readable_queued {
            stream.readable_queued = true;
            self.events.push_back(Event::Readable(id));
        }
        Ok(())
    }

    fn on_open(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        let id = frame.header.stream_id;
        if self.role == Role::Server {
            return Err(MuxError::OpenFromAgent { stream_id: id });
        }
        if id.is_multiple_of(2) {
            return Err(MuxError::OpenEvenId { stream_id: id });
        }
        if id <= self.last_stream_id {
            return Err(MuxError::OpenIdNotIncreasing {
                stream_id: id,
                last: self.last_stream_id,
            });
        }
        self.last_stream_id = id;

        // A rejected stream counts as closed, so Data the Server sent after the Open is
        // discarded and credited back.
        if self.go_away_sent || self.go_away_received.is_some() {
            frame::encode_reset(id, ResetReason::SessionClosing, &mut self.outbox);
            return Ok(());
        }
        if self.streams.len() >= self.config.max_streams as usize {
            frame::encode_reset(id, ResetReason::TooManyStreams, &mut self.outbox);
            return Ok(());
        }
        let service = std::str::from_utf8(frame.payload)
            .ok()
            .filter(|name| handshake::validate_name("service name", name).is_ok());
        let Some(service) = service else {
            frame::encode_reset(id, ResetReason::ProtocolError, &mut self.outbox);
            return Ok(());
        };

        self.streams.insert(id, Stream::new(&self.config));
        self.events.push_back(Event::Opened {
            id,
            service: service.to_owned(),
        });
        Ok(())
    }

    fn on_reset(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        let id = frame.header.stream_id;
        self.check_stream_id(FrameType::Reset, id)?;
        let reason = frame::parse_reset(frame)?;

        // A reset for a stream already closed here needs no reply.
        if self.remove_stream(id) {
            self.record_reset(id, reason);
        }
        Ok(())
    }

    fn on_window_update(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        let id = frame.header.stream_id;
        let increment = frame::parse_window_update(frame)?;
        if increment == 0 {
            return Err(MuxError::ZeroWindowIncrement { stream_id: id });
        }

        if id == 0 {
            let credit = u64::from(self.session_send_credit) + u64::from(increment);
            if credit > u64::from(MAX_WINDOW) {
                return Err(MuxError::SessionWindowOverflow { credit });
            }
            self.session_send_credit = credit as u32;
            self.wake_blocked();
            return Ok(());
        }

        self.check_stream_id(FrameType::WindowUpdate, id)?;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let credit = u64::from(stream.send_credit) + u64::from(increment);
        if credit > u64::from(MAX_WINDOW) {
            self.reset_for_peer_violation(id, ResetReason::FlowControl);
            return Ok(());
        }
        stream.send_credit = credit as u32;
        self.wake_blocked();
        Ok(())
    }

    fn on_ping(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        if frame.header.stream_id != 0 {
            return Err(MuxError::WrongStream {
                kind: FrameType::Ping,
                stream_id: frame.header.stream_id,
            });
        }
        let payload = frame::parse_ping(frame)?;

        if frame.header.flags & flags::ACK != 0 {
            self.events.push_back(Event::Pong(payload));
        } else {
            frame::encode_ping(flags::ACK, payload, &mut self.outbox);
        }
        Ok(())
    }

    fn on_go_away(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        if frame.header.stream_id != 0 {
            return Err(MuxError::WrongStream {
                kind: FrameType::GoAway,
                stream_id: frame.header.stream_id,
            });
        }
        let (last_stream_id, reason) = frame::parse_go_away(frame)?;
        let lowest = self
            .go_away_received
            .map_or(last_stream_id, |previous| previous.min(last_stream_id));
        self.go_away_received = Some(lowest);

        // The Agent rejects every Open above its last stream id, so the Server ends those
        // streams now instead of waiting for the Agent's resets.
        if self.role == Role::Server {
            let mut closing: Vec<u32> = self
                .streams
                .keys()
                .copied()
                .filter(|&id| id > lowest)
                .collect();
            closing.sort_unstable();
            for id in closing {
                self.remove_stream(id);
                self.record_reset(id, ResetReason::SessionClosing);
            }
        }

        self.events.push_back(Event::GoAway {
            last_stream_id,
            reason,
        });
        Ok(())
    }

    /// Fails unless `id` names a stream that is open or was closed here, the only streams
    /// that Data, Reset and WindowUpdate may name.
    fn check_stream_id(&self, kind: FrameType, id: u32) -> Result<(), MuxError> {
        if id == 0 {
            return Err(MuxError::WrongStream { kind, stream_id: 0 });
        }
        if self.streams.contains_key(&id) || (id % 2 == 1 && id <= self.last_stream_id) {
            return Ok(());
        }
        Err(MuxError::IdleStream {
            kind,
            stream_id: id,
        })
    }

    fn check_can_send(&self, id: u32) -> Result<(), MuxError> {
        let Some(stream) = self.streams.get(&id) else {
            return Err(match self.resets.get(&id) {
                Some(&reason) => MuxError::StreamReset {
                    stream_id: id,
                    reason,
                },
                None => MuxError::UnknownStream { stream_id: id },
            });
        };
        if stream.fin_sent {
            return Err(MuxError::FinSent { stream_id: id });
        }
        Ok(())
    }

    /// Removes a stream and credits its unread bytes back to the session window. Returns
    /// false if the stream was not open.
    fn remove_stream(&mut self, id: u32) -> bool {
        let Some(stream) = self.streams.remove(&id) else {
            return false;
        };
        // The buffer contains at most the stream window, so its length fits a u32.
        self.release_session_credit(stream.recv_buf.len() as u32);
        true
    }

    /// Resets a stream whose peer broke a stream rule, and records the reason for the
    /// application's next read.
    fn reset_for_peer_violation(&mut self, id: u32, reason: ResetReason) {
        self.remove_stream(id);
        frame::encode_reset(id, reason, &mut self.outbox);
        self.record_reset(id, reason);
    }

    /// Keeps `reason` for [`Mux::read`] and wakes the stream's reader and writer.
    fn record_reset(&mut self, id: u32, reason: ResetReason) {
        self.resets.insert(id, reason);
        self.events.push_back(Event::Readable(id));
        self.events.push_back(Event::Writable(id));
    }

    /// Counts `n` bytes as read or discarded, and queues a session WindowUpdate once half
    /// the session window is owed to the peer.
    fn release_session_credit(&mut self, n: u32) {
        self.session_recv_unacked += n;
        if self.session_recv_unacked >= update_threshold(self.config.session_window) {
            let increment = mem::take(&mut self.session_recv_unacked);
            self.session_recv_credit += increment;
            frame::encode_window_update(0, increment, &mut self.outbox);
        }
    }

    /// Queues [`Event::Writable`] for each blocked stream that has send capacity again.
    fn wake_blocked(&mut self) {
        let room = self.outbox_room();
        if self.blocked.is_empty() || room == 0 || self.session_send_credit == 0 {
            return;
        }

        let session_credit = self.session_send_credit;
        let streams = &mut self.streams;
        let events = &mut self.events;
        self.blocked.retain(|id| {
            let Some(stream) = streams.get_mut(id) else {
                return false;
            };
            if !stream.blocked || stream.fin_sent {
                stream.blocked = false;
                return false;
            }
            if stream.send_credit.min(session_credit) == 0 {
                return true;
            }
            stream.blocked = false;
            events.push_back(Event::Writable(*id));
            false
        });
    }
}

/// Bytes to read before returning credit for a window of `window` bytes.
fn update_threshold(window: u32) -> u32 {
    (window / 2).max(1)
}

/// Moves up to `buf.len()` bytes from the front of `source` into `buf`.
fn copy_out(source: &mut VecDeque<u8>, buf: &mut [u8]) -> usize {
    let n = source.len().min(buf.len());
    let (front, back) = source.as_slices();
    let from_front = front.len().min(n);
    buf[..from_front].copy_from_slice(&front[..from_front]);
    buf[from_front..n].copy_from_slice(&back[..n - from_front]);
    source.drain(..n);
    n
}

/// Error of the multiplexer.
///
/// Variants from [`MuxConfig::validate`] and the stream calls report a caller mistake or a
/// stream that is gone. Variants from [`Mux::handle_input`] are fatal for the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// A config field is outside its allowed range.
    #[error("mux config field {field} is {value}, but must be between {min} and {max}")]
    InvalidConfig {
        /// Field name.
        field: &'static str,
        /// Configured value.
        value: u64,
        /// Minimum allowed.
        min: u64,
        /// Maximum allowed.
        max: u64,
    },

    /// The Agent called [`Mux::open_stream`], but only the Server opens streams.
    #[error("only the Server opens streams, but open_stream was called on the Agent")]
    AgentCannotOpen,

    /// A stream cannot be opened after this side sent go-away.
    #[error("cannot open a stream after sending go-away")]
    GoAwaySent,

    /// A stream cannot be opened after the peer sent go-away.
    #[error("cannot open a stream after the peer sent go-away (last stream id {last_stream_id})")]
    GoAwayReceived {
        /// Last stream id in the peer's go-away.
        last_stream_id: u32,
    },

    /// The session already has `max_streams` open streams.
    #[error("cannot open a stream: {open} streams are open and max_streams is {max}, so wait for one to finish")]
    TooManyStreams {
        /// Streams open now.
        open: usize,
        /// Configured maximum.
        max: u32,
    },

    /// Every odd stream id up to 2^31 - 1 has been used. Open a new session.
    #[error("all stream ids of this session are used, so a new session is needed")]
    StreamIdsExhausted,

    /// The service name passed to [`Mux::open_stream`] is invalid.
    #[error("cannot open a stream: {source}")]
    InvalidService {
        /// Validation error of the name.
        source: HandshakeError,
    },

    /// The stream is not open: never opened, finished, or reset and already read.
    #[error("stream {stream_id} is not open")]
    UnknownStream {
        /// Stream id.
        stream_id: u32,
    },

    /// The stream was reset, by the peer or after a peer violation.
    #[error("stream {stream_id} was reset: {reason}")]
    StreamReset {
        /// Stream id.
        stream_id: u32,
        /// Reset reason.
        reason: ResetReason,
    },

    /// Data or FIN after this side already sent FIN on the stream.
    #[error("stream {stream_id} already sent FIN, so it cannot send more")]
    FinSent {
        /// Stream id.
        stream_id: u32,
    },

    /// A received frame header is invalid or a control payload has the wrong size.
    #[error(transparent)]
    Frame(#[from] FrameError),

    /// A handshake frame arrived after the handshake.
    #[error("{kind} frame received after the handshake")]
    HandshakeFrame {
        /// Frame type.
        kind: FrameType,
    },

    /// A frame arrived on a stream id its type does not allow, such as Ping on a stream
    /// other than 0, or Data on stream 0.
    #[error("{kind} frame is not allowed on stream {stream_id}")]
    WrongStream {
        /// Frame type.
        kind: FrameType,
        /// Stream id of the frame.
        stream_id: u32,
    },

    /// A frame names a stream that was never opened.
    #[error("{kind} frame for stream {stream_id}, which was never opened")]
    IdleStream {
        /// Frame type.
        kind: FrameType,
        /// Stream id.
        stream_id: u32,
    },

    /// The Server received an Open, but only the Server opens streams.
    #[error("the Agent sent Open for stream {stream_id}, but only the Server opens streams")]
    OpenFromAgent {
        /// Stream id in the Open.
        stream_id: u32,
    },

    /// An Open uses an even stream id, but the Server opens only odd ids.
    #[error("Open for stream {stream_id}, but Server-opened stream ids are odd")]
    OpenEvenId {
        /// Stream id in the Open.
        stream_id: u32,
    },

    /// An Open reuses a stream id or goes below the last one.
    #[error("Open for stream {stream_id}, but stream ids must increase and the last was {last}")]
    OpenIdNotIncreasing {
        /// Stream id in the Open.
        stream_id: u32,
        /// Highest id opened before.
        last: u32,
    },

    /// The peer sent more data than the session window allowed.
    #[error("Data frame of {len} bytes on stream {stream_id} exceeds the {available} bytes left in the session window")]
    SessionFlowControl {
        /// Stream id of the frame.
        stream_id: u32,
        /// Payload length.
        len: u32,
        /// Session credit the peer had left.
        available: u32,
    },

    /// A WindowUpdate has an increment of 0.
    #[error("WindowUpdate for stream {stream_id} has an increment of 0")]
    ZeroWindowIncrement {
        /// Stream id, 0 for the session.
        stream_id: u32,
    },

    /// A session WindowUpdate raises our send credit above [`MAX_WINDOW`].
    #[error("session WindowUpdate raises send credit to {credit} bytes, above the maximum of 2147483647")]
    SessionWindowOverflow {
        /// Credit after the increment.
        credit: u64,
    },

    /// Replies queued for the peer exceed the outbox limit, because the peer keeps sending
    /// without reading.
    #[error(
        "outbox holds {len} bytes, above the limit of {limit}, because the peer is not reading"
    )]
    OutboxOverflow {
        /// Outbox length.
        len: usize,
        /// max_outbox plus the headroom for replies.
        limit: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Server and an Agent multiplexer connected in memory.
    struct Pair {
        server: Mux,
        agent: Mux,
    }

    impl Pair {
        fn new() -> Self {
            Self::with_configs(MuxConfig::default(), MuxConfig::default())
        }

        fn with_config(config: MuxConfig) -> Self {
            Self::with_configs(config.clone(), config)
        }

        fn with_configs(server: MuxConfig, agent: MuxConfig) -> Self {
            server.validate().unwrap();
            agent.validate().unwrap();
            Self {
                server: Mux::new(Role::Server, server),
                agent: Mux::new(Role::Agent, agent),
            }
        }

        /// Moves outboxes in both directions until both are empty.
        fn exchange(&mut self) {
            self.exchange_in_chunks(usize::MAX);
        }

        /// Like `exchange`, but hands each side at most `chunk` bytes per call.
        fn exchange_in_chunks(&mut self, chunk: usize) {
            while self.server.outbox_len() > 0 || self.agent.outbox_len() > 0 {
                transfer(&mut self.server, &mut self.agent, chunk);
                transfer(&mut self.agent, &mut self.server, chunk);
            }
        }

        /// Opens a stream to `service` and delivers the Open.
        fn open(&mut self, service: &str) -> u32 {
            let id = self.server.open_stream(service).unwrap();
            self.exchange();
            assert_eq!(
                take_events(&mut self.agent),
                [Event::Opened {
                    id,
                    service: service.to_owned()
                }]
            );
            id
        }
    }

    fn transfer(from: &mut Mux, to: &mut Mux, chunk: usize) {
        while from.outbox_len() > 0 {
            let n = from.outbox_len().min(chunk);
            to.handle_input(&from.outbox()[..n]).unwrap();
            from.consume_outbox(n);
        }
    }

    fn take_events(mux: &mut Mux) -> Vec<Event> {
        std::iter::from_fn(|| mux.poll_event()).collect()
    }

    /// Reads stream `id` until it returns something other than data, and returns the data
    /// and that final result.
    fn read_all(mux: &mut Mux, id: u32) -> (Vec<u8>, StreamRead) {
        let mut data = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            match mux.read(id, &mut buf) {
                StreamRead::Data(n) => data.extend_from_slice(&buf[..n]),
                other => return (data, other),
            }
        }
    }

    /// Sends all of `data` on stream `id`, exchanging and reading on the receiver whenever
    /// capacity runs out, and returns what the receiver read.
    fn send_all(pair: &mut Pair, from_server: bool, id: u32, data: &[u8]) -> Vec<u8> {
        let mut received = Vec::new();
        let mut sent = 0;
        while sent < data.len() {
            let sender = if from_server {
                &mut pair.server
            } else {
                &mut pair.agent
            };
            sent += sender.send_data(id, &data[sent..]).unwrap();
            pair.exchange_in_chunks(7_001);
            let receiver = if from_server {
                &mut pair.agent
            } else {
                &mut pair.server
            };
            received.extend(read_all(receiver, id).0);
        }
        received
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn raw_frame(kind: FrameType, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_frame(kind, flags, stream_id, payload, &mut out);
        out
    }

    /// Decodes every frame in `bytes`, returning type, flags, stream id and payload.
    fn frames(bytes: &[u8]) -> Vec<(FrameType, u8, u32, Vec<u8>)> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Some((frame, used)) = frame::decode(rest, MAX_PAYLOAD_LIMIT).unwrap() {
            let header = frame.header;
            out.push((
                header.kind,
                header.flags,
                header.stream_id,
                frame.payload.to_vec(),
            ));
            rest = &rest[used..];
        }
        assert!(rest.is_empty(), "outbox ends inside a frame");
        out
    }

    fn small_windows() -> MuxConfig {
        MuxConfig {
            stream_window: 4096,
            session_window: 1 << 20,
            max_frame_payload: 1024,
            ..MuxConfig::default()
        }
    }

    #[test]
    fn config_default_is_valid() {
        assert_eq!(MuxConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_rejects_out_of_range() {
        let config = MuxConfig {
            stream_window: 0,
            ..MuxConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(MuxError::InvalidConfig {
                field: "stream_window",
                value: 0,
                min: 1024,
                max: u64::from(MAX_WINDOW)
            })
        );
        let config = MuxConfig {
            max_frame_payload: 1 << 24,
            ..MuxConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(MuxError::InvalidConfig {
                field: "max_frame_payload",
                ..
            })
        ));
        let config = MuxConfig {
            max_streams: 0,
            ..MuxConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "mux config field max_streams is 0, but must be between 1 and 1073741824"
        );
    }

    #[test]
    fn open_assigns_odd_increasing_ids() {
        let mut pair = Pair::new();
        assert_eq!(pair.open("postgres"), 1);
        assert_eq!(pair.open("erp.http"), 3);
        assert_eq!(pair.open("x"), 5);
        assert_eq!(pair.server.stream_count(), 3);
        assert_eq!(pair.agent.stream_count(), 3);
    }

    #[test]
    fn open_rejects_invalid_service() {
        let mut pair = Pair::new();
        assert!(matches!(
            pair.server.open_stream("no space"),
            Err(MuxError::InvalidService { .. })
        ));
        assert_eq!(pair.server.outbox_len(), 0);
    }

    #[test]
    fn agent_cannot_open() {
        let mut pair = Pair::new();
        assert_eq!(pair.agent.open_stream("db"), Err(MuxError::AgentCannotOpen));
    }

    #[test]
    fn data_both_ways() {
        let mut pair = Pair::new();
        let id = pair.open("db");

        assert_eq!(pair.server.send_data(id, b"request"), Ok(7));
        pair.exchange();
        assert_eq!(take_events(&mut pair.agent), [Event::Readable(id)]);
        assert_eq!(
            read_all(&mut pair.agent, id),
            (b"request".to_vec(), StreamRead::Pending)
        );

        assert_eq!(pair.agent.send_data(id, b"response"), Ok(8));
        pair.exchange();
        assert_eq!(take_events(&mut pair.server), [Event::Readable(id)]);
        assert_eq!(
            read_all(&mut pair.server, id),
            (b"response".to_vec(), StreamRead::Pending)
        );
    }

    #[test]
    fn readable_not_repeated_before_read() {
        let mut pair = Pair::new();
        let id = pair.open("db");
        for _ in 0..5 {
            pair.server.send_data(id, b"chunk").unwrap();
        }
        pair.exchange();
        assert_eq!(take_events(&mut pair.agent), [Event::Readable(id)]);

        let mut buf = [0u8; 3];
        assert_eq!(pair.agent.read(id, &mut buf), StreamRead::Data(3));
        pair.server.send_data(id, b"more").unwrap();
        pair.exchange();
        assert_eq!(take_events(&mut pair.agent), [Event::Readable(id)]);
    }

    #[test]
    fn large_transfer_one_byte_at_a_time() {
        let mut pair = Pair::with_config(small_windows());
        let id = pair.open("db");
        let data = pattern(10_000);

        let mut sent = 0;
        let mut received = Vec::new();
        while sent < data.len() {
            sent += pair.server.send_data(id, &data[sent..]).unwrap();
            pair.exchange_in_chunks(1);
            received.extend(read_all(&mut pair.agent, id).0);
        }
        pair.server.send_fin(id).unwrap();
        pair.exchange_in_chunks(1);
        let (rest, end) = read_all(&mut pair.agent, id);
        received.extend(rest);

        assert_eq!(end, StreamRead::Fin);
        assert_eq!(received, data);
    }

    #[test]
    fn large_transfer_odd_chunks_both_ways() {
        let mut pair = Pair::with_config(small_windows());
        let first = pair.open("db");
        let second = pair.open("cache");
        let up = pattern(100_003);
        let down: Vec<u8> = pattern(77_777).into_iter().rev().collect();

        assert_eq!(send_all(&mut pair, true, first, &up), up);
        assert_eq!(send_all(&mut pair, false, second, &down), down);
    }

    #[test]
    fn data_split_into_max_frames() {
        let mut pair = Pair::with_config(small_windows());
        let id = pair.open("db");
        assert_eq!(pair.server.send_data(id, &pattern(2500)), Ok(2500));

        let sizes: Vec<usize> = frames(pair.server.outbox())
            .iter()
            .map(|(kind, _, _, payload)| {
                assert_eq!(*kind, FrameType::Data);
                payload.len()
            })
            .collect();
        assert_eq!(sizes, [1024, 1024, 452]);
    }

    #[test]
    fn stream_credit_exhaustion_and_writable() {
        let mut pair = Pair::with_config(small_windows());
        let id = pair.open("db");

        assert_eq!(pair.server.send_capacity(id), 4096);
        assert_eq!(pair.server.send_data(id, &pattern(5000)), Ok(4096));
        assert_eq!(pair.server.send_capacity(id), 0);
        assert_eq!(pair.server.send_data(id, b"x"), Ok(0));
        pair.exchange();
        assert_eq!(take_events(&mut pair.server), []);

        // Reading less than half the window returns no credit.
        let mut buf = [0u8; 2047];
        assert_eq!(pair.agent.read(id, &mut buf), StreamRead::Data(2047));
        assert_eq!(pair.agent.outbox_len(), 0);

        let mut buf = [0u8; 1];
        assert_eq!(pair.agent.read(id, &mut buf), StreamRead::Data(1));
        assert_eq!(
            frames(pair.agent.outbox()),
            [(
                FrameType::WindowUpdate,
                0,
                id,
                2048u32.to_be_bytes().to_vec()
            )]
        );
        pair.exchange();
        assert_eq!(take_events(&mut pair.server), [Event::Writable(id)]);
        assert_eq!(pair.server.send_capacity(id), 2048);
    }

    #[test]
    fn session_window_caps_all_streams() {
        let config = MuxConfig {
            stream_window: 4096,
            session_window: 10_240,
            max_frame_payload: 1024,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_config(config);
        let ids: Vec<u32> = ["a", "b", "c", "d"].iter().map(|s| pair.open(s)).collect();

        let accepted: Vec<usize> = ids
            .iter()
            .map(|&id| pair.server.send_data(id, &pattern(4096)).unwrap())
            .collect();
        assert_eq!(accepted, [4096, 4096, 2048, 0]);
        assert_eq!(pair.server.send_capacity(ids[0]), 0);
        pair.exchange();

        // Reading 5120 bytes (half the session window) returns session credit. Writable
        // goes to the streams that saw zero capacity: a, whose own credit ran out, and d,
        // which found the session credit used up.
        let (data, _) = read_all(&mut pair.agent, ids[0]);
        assert_eq!(data.len(), 4096);
        let mut buf = [0u8; 1024];
        assert_eq!(pair.agent.read(ids[1], &mut buf), StreamRead::Data(1024));
        pair.exchange();

        let mut woken: Vec<Event> = take_events(&mut pair.server);
        woken.sort_by_key(|event| match event {
            Event::Writable(id) => *id,
            _ => u32::MAX,
        });
        assert_eq!(woken, [Event::Writable(ids[0]), Event::Writable(ids[3])]);
        assert_eq!(pair.server.send_capacity(ids[3]), 4096);
        // Stream a got back the 3000 bytes read before its first stream WindowUpdate.
        assert_eq!(pair.server.send_capacity(ids[0]), 3000);
    }

    #[test]
    fn session_window_bounds_buffered_bytes() {
        let config = MuxConfig {
            stream_window: 4096,
            session_window: 8192,
            max_frame_payload: 1024,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_config(config);
        let ids: Vec<u32> = (0..6).map(|i| pair.open(&format!("s{i}"))).collect();
        let mut total = 0;
        for &id in &ids {
            total += pair.server.send_data(id, &pattern(4096)).unwrap();
        }
        pair.exchange();
        assert_eq!(total, 8192);

        let buffered: usize = ids
            .iter()
            .map(|&id| read_all(&mut pair.agent, id).0.len())
            .sum();
        assert_eq!(buffered, 8192);
    }

    #[test]
    fn writable_after_outbox_drains() {
        let config = MuxConfig {
            max_outbox: 4096,
            ..small_windows()
        };
        let mut pair = Pair::with_config(config);
        let id = pair.open("db");

        assert_eq!(pair.server.send_data(id, &pattern(3000)), Ok(3000));
        assert_eq!(
            pair.server.send_capacity(id),
            4096 - pair.server.outbox_len()
        );
        assert_eq!(
            pair.server.send_data(id, &pattern(3000)),
            Ok(4096 - 3000 - 27)
        );
        assert_eq!(pair.server.send_capacity(id), 0);

        pair.server.consume_outbox(100);
        assert_eq!(take_events(&mut pair.server), [Event::Writable(id)]);
    }

    #[test]
    fn server_half_close_agent_still_sends() {
        let mut pair = Pair::new();
        let id = pair.open("db");

        pair.server.send_data(id, b"query").unwrap();
        pair.server.send_fin(id).unwrap();
        assert_eq!(
            pair.server.send_data(id, b"late"),
            Err(MuxError::FinSent { stream_id: id })
        );
        assert!(!pair.server.is_send_open(id));
        assert!(pair.agent.is_send_open(id));
        assert_eq!(pair.server.send_capacity(id), 0);
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.agent, id),
            (b"query".to_vec(), StreamRead::Fin)
        );
        assert_eq!(pair.agent.stream_count(), 1);

        pair.agent.send_data(id, b"rows").unwrap();
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.server, id),
            (b"rows".to_vec(), StreamRead::Pending)
        );

        pair.agent.send_fin(id).unwrap();
        assert_eq!(pair.agent.stream_count(), 0);
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.server, id),
            (Vec::new(), StreamRead::Fin)
        );
        assert_eq!(pair.server.stream_count(), 0);
        assert_eq!(pair.server.read(id, &mut [0; 4]), StreamRead::Closed);
    }

    #[test]
    fn agent_half_close_server_still_sends() {
        let mut pair = Pair::new();
        let id = pair.open("db");

        pair.agent.send_data(id, b"banner").unwrap();
        pair.agent.send_fin(id).unwrap();
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.server, id),
            (b"banner".to_vec(), StreamRead::Fin)
        );
        assert_eq!(pair.server.read(id, &mut [0; 4]), StreamRead::Fin);

        pair.server.send_data(id, b"input").unwrap();
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.agent, id),
            (b"input".to_vec(), StreamRead::Pending)
        );

        pair.server.send_fin(id).unwrap();
        assert_eq!(pair.server.stream_count(), 0);
        pair.exchange();
        assert_eq!(read_all(&mut pair.agent, id), (Vec::new(), StreamRead::Fin));
        assert_eq!(pair.agent.stream_count(), 0);
    }

    #[test]
    fn server_reset_reaches_agent() {
        let mut pair = Pair::new();
        let id = pair.open("db");
        pair.server.send_data(id, b"unread").unwrap();
        pair.exchange();
        take_events(&mut pair.agent);

        pair.server.reset(id, ResetReason::Cancelled);
        assert_eq!(pair.server.stream_count(), 0);
        pair.exchange();

        assert_eq!(
            take_events(&mut pair.agent),
            [Event::Readable(id), Event::Writable(id)]
        );
        assert_eq!(pair.agent.stream_count(), 0);
        assert_eq!(
            pair.agent.send_data(id, b"x"),
            Err(MuxError::StreamReset {
                stream_id: id,
                reason: ResetReason::Cancelled
            })
        );
        assert_eq!(
            pair.agent.read(id, &mut [0; 8]),
            StreamRead::Reset(ResetReason::Cancelled)
        );
        assert_eq!(pair.agent.read(id, &mut [0; 8]), StreamRead::Closed);
        assert_eq!(
            pair.agent.send_data(id, b"x"),
            Err(MuxError::UnknownStream { stream_id: id })
        );
    }

    #[test]
    fn agent_reset_reaches_server() {
        let mut pair = Pair::new();
        let id = pair.open("db");

        pair.agent.reset(id, ResetReason::ConnectRefused);
        pair.exchange();
        assert_eq!(
            pair.server.read(id, &mut [0; 8]),
            StreamRead::Reset(ResetReason::ConnectRefused)
        );
        assert_eq!(pair.server.stream_count(), 0);
        assert_eq!(pair.agent.stream_count(), 0);
    }

    #[test]
    fn reset_wakes_blocked_writer() {
        let mut pair = Pair::with_config(small_windows());
        let id = pair.open("db");
        pair.server.send_data(id, &pattern(4096)).unwrap();
        assert_eq!(pair.server.send_capacity(id), 0);

        pair.agent.reset(id, ResetReason::TargetError);
        pair.exchange();
        assert!(take_events(&mut pair.server).contains(&Event::Writable(id)));
        assert_eq!(pair.server.send_capacity(id), 0);
        assert_eq!(
            pair.server.send_data(id, b"x"),
            Err(MuxError::StreamReset {
                stream_id: id,
                reason: ResetReason::TargetError
            })
        );
    }

    #[test]
    fn reset_of_unknown_stream_sends_nothing() {
        let mut pair = Pair::new();
        pair.server.reset(99, ResetReason::Cancelled);
        assert_eq!(pair.server.outbox_len(), 0);
    }

    #[test]
    fn reset_codes_survive_round_trip() {
        let mut pair = Pair::new();
        let reasons = [
            ResetReason::UnknownService,
            ResetReason::ConnectTimeout,
            ResetReason::SessionClosing,
            ResetReason::Other(1234),
        ];
        for reason in reasons {
            let id = pair.open("db");
            pair.agent.reset(id, reason);
            pair.exchange();
            assert_eq!(pair.server.read(id, &mut [0; 1]), StreamRead::Reset(reason));
        }
    }

    #[test]
    fn data_beyond_stream_window_resets_flow_control() {
        let mut pair = Pair::with_config(small_windows());
        let id = pair.open("db");

        // The peer ignores its credit: 4 full frames fill the window, the fifth exceeds it.
        for _ in 0..5 {
            let bytes = raw_frame(FrameType::Data, 0, id, &[7; 1024]);
            pair.agent.handle_input(&bytes).unwrap();
        }
        assert_eq!(
            frames(pair.agent.outbox()),
            [(FrameType::Reset, 0, id, 6u32.to_be_bytes().to_vec())]
        );
        assert_eq!(
            take_events(&mut pair.agent),
            [
                Event::Readable(id),
                Event::Readable(id),
                Event::Writable(id)
            ]
        );
        assert_eq!(
            pair.agent.read(id, &mut [0; 10]),
            StreamRead::Reset(ResetReason::FlowControl)
        );
        assert_eq!(pair.agent.stream_count(), 0);

        pair.exchange();
        assert_eq!(
            pair.server.read(id, &mut [0; 10]),
            StreamRead::Reset(ResetReason::FlowControl)
        );
    }

    #[test]
    fn data_after_fin_resets_protocol_error() {
        let mut pair = Pair::new();
        let id = pair.open("db");
        pair.agent
            .handle_input(&raw_frame(FrameType::Data, flags::FIN, id, b"last"))
            .unwrap();
        pair.agent
            .handle_input(&raw_frame(FrameType::Data, 0, id, b"more"))
            .unwrap();

        assert_eq!(
            frames(pair.agent.outbox()),
            [(FrameType::Reset, 0, id, 5u32.to_be_bytes().to_vec())]
        );
        assert_eq!(
            pair.agent.read(id, &mut [0; 10]),
            StreamRead::Reset(ResetReason::ProtocolError)
        );
    }

    #[test]
    fn data_for_closed_stream_credits_session() {
        let config = MuxConfig {
            session_window: 4096,
            stream_window: 4096,
            max_frame_payload: 1024,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_config(config);
        let id = pair.open("db");
        pair.agent.reset(id, ResetReason::Cancelled);
        pair.agent.consume_outbox(pair.agent.outbox_len());

        // Three session windows of data still in flight from the Server.
        for _ in 0..12 {
            let bytes = raw_frame(FrameType::Data, 0, id, &[1; 1024]);
            pair.agent.handle_input(&bytes).unwrap();
        }
        let increments: Vec<(u32, Vec<u8>)> = frames(pair.agent.outbox())
            .into_iter()
            .map(|(kind, _, stream_id, payload)| {
                assert_eq!(kind, FrameType::WindowUpdate);
                (stream_id, payload)
            })
            .collect();
        assert_eq!(increments, vec![(0, 2048u32.to_be_bytes().to_vec()); 6]);
        assert_eq!(take_events(&mut pair.agent), []);
    }

    #[test]
    fn unread_data_of_reset_stream_credits_session() {
        let config = MuxConfig {
            session_window: 4096,
            stream_window: 4096,
            max_frame_payload: 1024,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_config(config);
        let first = pair.open("db");
        let second = pair.open("db");

        assert_eq!(pair.server.send_data(first, &pattern(4096)), Ok(4096));
        assert_eq!(pair.server.send_capacity(second), 0);
        pair.exchange();

        pair.agent.reset(first, ResetReason::Cancelled);
        pair.exchange();
        assert_eq!(pair.server.send_capacity(second), 4096);
    }

    #[test]
    fn session_flow_control_violation_is_fatal() {
        let config = MuxConfig {
            session_window: 2048,
            stream_window: 4096,
            max_frame_payload: 1024,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_config(config);
        let id = pair.open("db");
        for _ in 0..2 {
            let bytes = raw_frame(FrameType::Data, 0, id, &[0; 1024]);
            pair.agent.handle_input(&bytes).unwrap();
        }
        let bytes = raw_frame(FrameType::Data, 0, id, &[0; 1]);
        assert_eq!(
            pair.agent.handle_input(&bytes),
            Err(MuxError::SessionFlowControl {
                stream_id: id,
                len: 1,
                available: 0
            })
        );
    }

    #[test]
    fn ping_answered_with_pong() {
        let mut pair = Pair::new();
        pair.server.ping(0xfeed);
        pair.agent.ping(7);
        pair.exchange();
        assert_eq!(take_events(&mut pair.server), [Event::Pong(0xfeed)]);
        assert_eq!(take_events(&mut pair.agent), [Event::Pong(7)]);
    }

    #[test]
    fn ping_flood_overflows_outbox() {
        let mut pair = Pair::new();
        let ping = raw_frame(FrameType::Ping, 0, 0, &[0; 8]);
        let limit = MuxConfig::default().max_outbox + CONTROL_HEADROOM;
        let pings_to_fill = limit / ping.len();
        for _ in 0..pings_to_fill {
            pair.agent.handle_input(&ping).unwrap();
        }
        assert!(matches!(
            pair.agent.handle_input(&ping),
            Err(MuxError::OutboxOverflow { .. })
        ));
    }

    #[test]
    fn go_away_stops_new_streams_existing_finish() {
        let mut pair = Pair::new();
        let id = pair.open("db");

        pair.agent.go_away(GoAwayReason::Shutdown);
        assert!(pair.agent.go_away_sent());
        pair.exchange();
        assert_eq!(
            take_events(&mut pair.server),
            [Event::GoAway {
                last_stream_id: id,
                reason: GoAwayReason::Shutdown
            }]
        );
        assert!(pair.server.go_away_received());
        assert_eq!(
            pair.server.open_stream("db"),
            Err(MuxError::GoAwayReceived { last_stream_id: id })
        );

        pair.server.send_data(id, b"still").unwrap();
        pair.server.send_fin(id).unwrap();
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.agent, id),
            (b"still".to_vec(), StreamRead::Fin)
        );
        pair.agent.send_fin(id).unwrap();
        pair.exchange();
        assert_eq!(
            read_all(&mut pair.server, id),
            (Vec::new(), StreamRead::Fin)
        );
        assert_eq!(pair.server.stream_count(), 0);
        assert_eq!(pair.agent.stream_count(), 0);
    }

    #[test]
    fn go_away_sent_blocks_open() {
        let mut pair = Pair::new();
        pair.server.go_away(GoAwayReason::Shutdown);
        assert_eq!(pair.server.open_stream("db"), Err(MuxError::GoAwaySent));

        // A second call sends nothing more.
        let len = pair.server.outbox_len();
        pair.server.go_away(GoAwayReason::ProtocolError);
        assert_eq!(pair.server.outbox_len(), len);

        pair.exchange();
        assert!(pair.agent.go_away_received());
    }

    #[test]
    fn go_away_ends_streams_the_agent_never_saw() {
        let mut pair = Pair::new();
        let seen = pair.open("db");

        pair.agent.go_away(GoAwayReason::Shutdown);
        let unseen = pair.server.open_stream("db").unwrap();
        pair.exchange();

        let events = take_events(&mut pair.server);
        assert!(events.contains(&Event::GoAway {
            last_stream_id: seen,
            reason: GoAwayReason::Shutdown
        }));
        assert!(events.contains(&Event::Readable(unseen)));
        assert_eq!(
            pair.server.read(unseen, &mut [0; 1]),
            StreamRead::Reset(ResetReason::SessionClosing)
        );
        assert_eq!(pair.server.stream_count(), 1);
        assert_eq!(pair.agent.stream_count(), 1);
        assert_eq!(take_events(&mut pair.agent), []);
    }

    #[test]
    fn max_streams_limits_open() {
        let config = MuxConfig {
            max_streams: 2,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_config(config);
        let first = pair.open("db");
        pair.open("db");
        assert_eq!(
            pair.server.open_stream("db"),
            Err(MuxError::TooManyStreams { open: 2, max: 2 })
        );

        pair.server.reset(first, ResetReason::Cancelled);
        pair.exchange();
        assert_eq!(pair.server.open_stream("db"), Ok(5));
    }

    #[test]
    fn agent_refuses_open_above_its_max_streams() {
        let server = MuxConfig::default();
        let agent = MuxConfig {
            max_streams: 1,
            ..MuxConfig::default()
        };
        let mut pair = Pair::with_configs(server, agent);
        pair.open("db");
        let refused = pair.server.open_stream("db").unwrap();
        pair.server.send_data(refused, b"early").unwrap();
        pair.exchange();

        assert_eq!(take_events(&mut pair.agent), []);
        assert_eq!(
            pair.server.read(refused, &mut [0; 1]),
            StreamRead::Reset(ResetReason::TooManyStreams)
        );
        assert_eq!(pair.agent.stream_count(), 1);
    }

    #[test]
    fn agent_resets_open_with_invalid_service() {
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        agent
            .handle_input(&raw_frame(FrameType::Open, 0, 1, b"bad name"))
            .unwrap();
        assert_eq!(agent.poll_event(), None);
        assert_eq!(
            frames(agent.outbox()),
            [(FrameType::Reset, 0, 1, 5u32.to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn open_with_even_id_is_fatal() {
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Open, 0, 2, b"db")),
            Err(MuxError::OpenEvenId { stream_id: 2 })
        );
    }

    #[test]
    fn open_with_reused_id_is_fatal() {
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        agent
            .handle_input(&raw_frame(FrameType::Open, 0, 5, b"db"))
            .unwrap();
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Open, 0, 5, b"db")),
            Err(MuxError::OpenIdNotIncreasing {
                stream_id: 5,
                last: 5
            })
        );
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Open, 0, 3, b"db")),
            Err(MuxError::OpenIdNotIncreasing {
                stream_id: 3,
                last: 5
            })
        );
    }

    #[test]
    fn open_received_by_server_is_fatal() {
        let mut server = Mux::new(Role::Server, MuxConfig::default());
        assert_eq!(
            server.handle_input(&raw_frame(FrameType::Open, 0, 1, b"db")),
            Err(MuxError::OpenFromAgent { stream_id: 1 })
        );
    }

    #[test]
    fn frames_for_idle_streams_are_fatal() {
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        agent
            .handle_input(&raw_frame(FrameType::Open, 0, 1, b"db"))
            .unwrap();
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Data, 0, 3, b"x")),
            Err(MuxError::IdleStream {
                kind: FrameType::Data,
                stream_id: 3
            })
        );
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Reset, 0, 4, &[0; 4])),
            Err(MuxError::IdleStream {
                kind: FrameType::Reset,
                stream_id: 4
            })
        );
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Data, 0, 0, b"x")),
            Err(MuxError::WrongStream {
                kind: FrameType::Data,
                stream_id: 0
            })
        );
    }

    #[test]
    fn session_frames_on_streams_are_fatal() {
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::Ping, 0, 1, &[0; 8])),
            Err(MuxError::WrongStream {
                kind: FrameType::Ping,
                stream_id: 1
            })
        );
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::GoAway, 0, 3, &[0; 8])),
            Err(MuxError::WrongStream {
                kind: FrameType::GoAway,
                stream_id: 3
            })
        );
    }

    #[test]
    fn handshake_frame_after_handshake_is_fatal() {
        let mut server = Mux::new(Role::Server, MuxConfig::default());
        assert_eq!(
            server.handle_input(&raw_frame(FrameType::Hello, 0, 0, b"")),
            Err(MuxError::HandshakeFrame {
                kind: FrameType::Hello
            })
        );
    }

    #[test]
    fn bad_frames_are_fatal() {
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        assert_eq!(
            agent.handle_input(&raw_frame(FrameType::WindowUpdate, 0, 0, &[0; 4])),
            Err(MuxError::ZeroWindowIncrement { stream_id: 0 })
        );

        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        let increment = MAX_WINDOW - MuxConfig::default().session_window + 1;
        assert!(matches!(
            agent.handle_input(&raw_frame(
                FrameType::WindowUpdate,
                0,
                0,
                &increment.to_be_bytes()
            )),
            Err(MuxError::SessionWindowOverflow { .. })
        ));

        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        assert!(matches!(
            agent.handle_input(&raw_frame(FrameType::Ping, 0, 0, &[0; 3])),
            Err(MuxError::Frame(FrameError::PayloadLength { .. }))
        ));

        // An oversized header fails before its payload arrives.
        let mut agent = Mux::new(Role::Agent, MuxConfig::default());
        let oversized = raw_frame(FrameType::Data, 0, 1, &[0; 20_000]);
        agent.handle_input(&oversized[..4]).unwrap();
        assert!(matches!(
            agent.handle_input(&oversized[4..HEADER_LEN]),
            Err(MuxError::Frame(FrameError::Oversized { len: 20_000, .. }))
        ));
    }

    #[test]
    fn stream_window_overflow_resets_stream() {
        let mut pair = Pair::new();
        let id = pair.open("db");
        pair.server
            .handle_input(&raw_frame(
                FrameType::WindowUpdate,
                0,
                id,
                &MAX_WINDOW.to_be_bytes(),
            ))
            .unwrap();
        assert_eq!(
            pair.server.read(id, &mut [0; 1]),
            StreamRead::Reset(ResetReason::FlowControl)
        );
        assert_eq!(
            frames(pair.server.outbox()),
            [(FrameType::Reset, 0, id, 6u32.to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn late_frames_for_closed_stream_are_ignored() {
        let mut pair = Pair::new();
        let id = pair.open("db");
        pair.server.reset(id, ResetReason::Cancelled);

        // Frames the Agent sent before it saw the reset.
        pair.agent.send_data(id, b"late").unwrap();
        pair.agent.send_fin(id).unwrap();
        pair.exchange();
        assert_eq!(take_events(&mut pair.server), []);
        assert_eq!(pair.server.read(id, &mut [0; 4]), StreamRead::Closed);
    }

    #[test]
    fn outbox_consumed_in_pieces_keeps_order() {
        let mut server = Mux::new(Role::Server, small_windows());
        let id = server.open_stream("db").unwrap();
        server.send_data(id, &pattern(4000)).unwrap();
        let mut expected = server.outbox().to_vec();

        // Frames appended while the front is partly consumed must follow the older bytes.
        let mut written = Vec::new();
        let mut step = 1;
        let mut pings = 0;
        while server.outbox_len() > 0 {
            let n = step.min(server.outbox_len());
            written.extend_from_slice(&server.outbox()[..n]);
            server.consume_outbox(n);
            step = step * 2 + 1;
            if pings < 3 {
                server.ping(pings);
                frame::encode_ping(0, pings, &mut expected);
                pings += 1;
            }
        }
        assert_eq!(written, expected);
    }

    #[test]
    fn random_frames_never_panic() {
        // A fixed pseudo-random sequence, so a failure reproduces.
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = [
            FrameType::Data,
            FrameType::Open,
            FrameType::Reset,
            FrameType::WindowUpdate,
            FrameType::Ping,
            FrameType::GoAway,
        ];

        for round in 0..2_000 {
            let role = if round % 2 == 0 {
                Role::Agent
            } else {
                Role::Server
            };
            let mut mux = Mux::new(role, small_windows());
            let mut input = Vec::new();
            for _ in 0..20 {
                let kind = kinds[(next() % kinds.len() as u64) as usize];
                let stream_id = (next() % 8) as u32;
                let payload_len = match next() % 4 {
                    0 => 4,
                    1 => 8,
                    2 => (next() % 1025) as usize,
                    _ => 2,
                };
                let payload: Vec<u8> = (0..payload_len).map(|_| next() as u8).collect();
                let flags = (next() % 2) as u8;
                frame::encode_frame(kind, flags, stream_id, &payload, &mut input);
            }

            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = ((next() % 300) as usize + 1).min(rest.len());
                if mux.handle_input(&rest[..n]).is_err() {
                    break;
                }
                rest = &rest[n..];
                while let Some(event) = mux.poll_event() {
                    if let Event::Readable(id) | Event::Opened { id, .. } = event {
                        mux.read(id, &mut [0; 512]);
                    }
                }
                let drained = mux.outbox_len() / 2;
                mux.consume_outbox(drained);
            }
        }
    }

    #[test]
    fn stream_count_returns_to_zero() {
        let mut pair = Pair::new();
        let ids: Vec<u32> = (0..10).map(|_| pair.open("db")).collect();
        for (n, &id) in ids.iter().enumerate() {
            match n % 3 {
                0 => pair.server.reset(id, ResetReason::Cancelled),
                1 => pair.agent.reset(id, ResetReason::TargetError),
                _ => {
                    pair.server.send_fin(id).unwrap();
                    pair.agent.send_fin(id).unwrap();
                }
            }
        }
        pair.exchange();
        for &id in &ids {
            read_all(&mut pair.server, id);
            read_all(&mut pair.agent, id);
        }
        assert_eq!(pair.server.stream_count(), 0);
        assert_eq!(pair.agent.stream_count(), 0);
    }
}
