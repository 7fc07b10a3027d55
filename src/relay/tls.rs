//! rustls driven over an async TCP stream of any backend, with poll-style primitives for
//! the session loop and async helpers for the handshake.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::protocol::frame::{self, FrameHeader};
use crate::protocol::handshake::MAX_HANDSHAKE_PAYLOAD;

use super::SessionError;

/// Size of the buffer for ciphertext read from the socket.
const READ_BUFFER: usize = 64 * 1024;

/// A TLS connection over a TCP stream.
pub struct TlsIo<T> {
    tcp: T,
    tls: rustls::Connection,
    read_buffer: Box<[u8]>,
    /// Ciphertext in `read_buffer` not yet fed to rustls.
    read_start: usize,
    read_end: usize,
    /// The peer closed the TCP stream.
    eof: bool,
}

/// The state of a [`TlsIo`] apart from its TCP stream: it can move to another thread.
pub struct TlsState {
    tls: rustls::Connection,
    /// Ciphertext read from the socket and not yet fed to rustls.
    unread: Vec<u8>,
    eof: bool,
}

/// Adapts `poll_write` to `io::Write` for `write_tls`; `Pending` becomes `WouldBlock`.
struct SyncWriter<'a, 'b, T> {
    tcp: &'a mut T,
    cx: &'a mut Context<'b>,
}

impl<T: AsyncWrite + Unpin> Write for SyncWriter<'_, '_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsIo<T> {
    pub fn new(tcp: T, tls: rustls::Connection) -> Self {
        Self {
            tcp,
            tls,
            read_buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            read_start: 0,
            read_end: 0,
            eof: false,
        }
    }

    /// Splits this connection into its TCP stream and the state that has no runtime in it,
    /// so that another shard can continue it with [`Self::from_parts`]. Call it only after
    /// [`Self::poll_flush`] has completed, because unsent records stay in the TLS state.
    pub fn into_parts(self) -> (T, TlsState) {
        let state = TlsState {
            tls: self.tls,
            unread: self.read_buffer[self.read_start..self.read_end].to_vec(),
            eof: self.eof,
        };
        (self.tcp, state)
    }

    /// Continues a connection split by [`Self::into_parts`] over `tcp`.
    pub fn from_parts(tcp: T, state: TlsState) -> Self {
        let mut io = Self::new(tcp, state.tls);
        io.read_buffer[..state.unread.len()].copy_from_slice(&state.unread);
        io.read_end = state.unread.len();
        io.eof = state.eof;
        io
    }

    /// Reads until rustls has a response to send, which on a server takes the client's whole
    /// first flight (its ClientHello). A peer that sends part of one and stalls stays here.
    pub async fn receive_first_flight(&mut self) -> Result<(), SessionError> {
        while !self.tls.wants_write() {
            if !poll_fn(|cx| self.poll_fill(cx)).await? {
                return Err(SessionError::PeerClosed);
            }
        }
        Ok(())
    }

    /// Returns the rustls connection, for exporters and peer details.
    pub fn tls(&self) -> &rustls::Connection {
        &self.tls
    }

    /// Feeds buffered ciphertext to rustls, reading from the socket when none is left.
    ///
    /// Returns `Ready(Ok(true))` after progress; the caller then drains plaintext with
    /// [`Self::read_plaintext`] before the next call, because rustls takes no more records
    /// while its plaintext buffer is full. Returns `Ready(Ok(false))` once the peer closed
    /// the TCP stream and every byte was fed.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, SessionError>> {
        if self.read_start == self.read_end {
            if self.eof {
                return Poll::Ready(Ok(false));
            }
            match Pin::new(&mut self.tcp).poll_read(cx, &mut self.read_buffer) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    return Poll::Ready(Ok(false));
                }
                Poll::Ready(Ok(n)) => (self.read_start, self.read_end) = (0, n),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(SessionError::Io(error))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.tls.wants_read() {
            return Poll::Ready(Ok(true));
        }

        let mut input = &self.read_buffer[self.read_start..self.read_end];
        let fed = self.tls.read_tls(&mut input).map_err(SessionError::Io)?;
        self.read_start += fed;
        if let Err(error) = self.tls.process_new_packets() {
            // Let the peer see the alert before the connection drops.
            let _ = self.poll_flush(cx);
            return Poll::Ready(Err(SessionError::Tls(error)));
        }
        Poll::Ready(Ok(true))
    }

    /// Copies decrypted bytes into `out`: `Some(0)` after the peer's close_notify, `None`
    /// when no plaintext is buffered.
    pub fn read_plaintext(&mut self, out: &mut [u8]) -> Result<Option<usize>, SessionError> {
        match self.tls.reader().read(out) {
            Ok(n) => Ok(Some(n)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(SessionError::Io(error)),
        }
    }

    /// Hands plaintext to rustls for encryption; returns how much it took (it stops at its
    /// buffer limit).
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        self.tls.writer().write(data).map_err(SessionError::Io)
    }

    /// Writes pending TLS records to the socket until rustls has none left.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        while self.tls.wants_write() {
            let mut writer = SyncWriter {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut writer) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(SessionError::Io(error))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Runs the TLS handshake to completion.
    pub async fn complete_handshake(&mut self) -> Result<(), SessionError> {
        while self.tls.is_handshaking() {
            poll_fn(|cx| self.poll_flush(cx)).await?;
            if !self.tls.is_handshaking() {
                break;
            }
            if !poll_fn(|cx| self.poll_fill(cx)).await? {
                return Err(SessionError::PeerClosed);
            }
        }
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Encrypts and sends `bytes` completely.
    pub async fn send(&mut self, mut bytes: &[u8]) -> Result<(), SessionError> {
        while !bytes.is_empty() {
            let n = self.write_plaintext(bytes)?;
            bytes = &bytes[n..];
            poll_fn(|cx| self.poll_flush(cx)).await?;
        }
        Ok(())
    }

    /// Reads one handshake frame; `pending` carries bytes beyond it to the next call and,
    /// after the handshake, to the session.
    pub async fn receive_frame(
        &mut self,
        pending: &mut Vec<u8>,
    ) -> Result<(FrameHeader, Vec<u8>), SessionError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((frame, consumed)) = frame::decode(pending, MAX_HANDSHAKE_PAYLOAD)? {
                let result = (frame.header, frame.payload.to_vec());
                pending.drain(..consumed);
                return Ok(result);
            }
            match self.read_plaintext(&mut chunk)? {
                Some(0) => return Err(SessionError::PeerClosed),
                Some(n) => pending.extend_from_slice(&chunk[..n]),
                None => {
                    if !poll_fn(|cx| self.poll_fill(cx)).await? {
                        return Err(SessionError::PeerClosed);
                    }
                }
            }
            if pending.len() > MAX_HANDSHAKE_PAYLOAD as usize + frame::HEADER_LEN {
                return Err(SessionError::Protocol("handshake message too long".into()));
            }
        }
    }

    /// Sends a TLS close_notify and flushes it; errors are ignored because the connection is
    /// being dropped anyway.
    pub async fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = poll_fn(|cx| self.poll_flush(cx)).await;
        let _ = poll_fn(|cx| Pin::new(&mut self.tcp).poll_close(cx)).await;
    }
}
