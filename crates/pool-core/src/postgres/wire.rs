//! Watching a connection's protocol stream for its transaction status.
//!
//! PostgreSQL ends every request (the start-up, a simple `Query`, an extended-protocol `Sync`)
//! with a `ReadyForQuery` message whose one byte is the session's transaction status: `I`
//! idle, `T` in a transaction block, `E` in a failed one. tokio-postgres reads that byte and
//! drops it, so the pool reads it itself: [`Wire`] sits between the driver and its stream,
//! frames the bytes passing each way (five-byte headers, no copying and no decoding of
//! payloads) and publishes, in a [`WireState`], the requests sent (and the last that runs
//! something), the answers received and the last status. On return a connection is clean
//! when every request that runs something was answered and the last answer said `I`.
//!
//! Under TLS the socket carries ciphertext, so the watching moves up a layer: the socket's
//! watcher sees the `SSLRequest`, and when the server accepts it (`S`) it stops, and the
//! watcher around the TLS stream (see [`TrackTls`]) takes over from the start-up message.
//! With `sslnegotiation=direct` there is no `SSLRequest`: the socket is not watched at all.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The length of an `SSLRequest` (its length field counts itself and the request code).
const SSL_REQUEST_LEN: u32 = 8;

/// What one connection's stream has shown so far. Each field has one writer: the counts and
/// the status are written by the task that drives the connection, `offset` by whoever holds
/// the connection while resetting it; the pool reads them when the connection comes back.
#[derive(Debug, Default)]
pub(crate) struct WireState {
    /// Requests sent that the server answers with one `ReadyForQuery` each (numbered from 1):
    /// the start-up message, a `Query`, a `FunctionCall`, and an extended-protocol group (its
    /// first message to its `Sync`).
    sent: AtomicU32,
    /// The number of the last request that runs something (a `Query`, a `FunctionCall`, a
    /// group with a `Bind` or an `Execute`; the start-up too), counted from its first byte.
    /// Groups that only prepare, describe or close statements (tokio-postgres closes a
    /// statement after each `query(&str)`) cannot change the transaction status.
    last_executing: AtomicU32,
    /// `ReadyForQuery` messages received.
    answered: AtomicU32,
    /// Added to `answered` by a reset, after a round trip proved every earlier request
    /// answered: makes up for requests the server answers together (the `Sync` a copy-in
    /// ignores).
    offset: AtomicU32,
    /// The status byte of the last `ReadyForQuery` (0 before the first).
    status: AtomicU8,
    /// The server is in copy-in mode (it sent `CopyInResponse`; no `ReadyForQuery` since).
    copying: AtomicBool,
}

/// A session's state as the protocol stream shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Every request that runs something has been answered, and no transaction is open.
    Idle,
    /// Every request that runs something has been answered, inside a transaction block
    /// (status `T`) or a failed one (`E`).
    InTransaction,
    /// A request that runs something is still unanswered, or a copy is in progress (its
    /// caller may have gone away mid-flight).
    Busy,
}

impl WireState {
    pub(crate) fn session(&self) -> SessionState {
        // `answered` is published after `status`: reading it first makes the status at least
        // as new as the count.
        let answered = self
            .answered
            .load(Ordering::Acquire)
            .wrapping_add(self.offset.load(Ordering::Acquire));
        let status = self.status.load(Ordering::Acquire);
        let last_executing = self.last_executing.load(Ordering::Acquire);
        // Wrapping: counts are compared as a distance, as TCP compares sequence numbers.
        if (last_executing.wrapping_sub(answered) as i32) > 0
            || self.copying.load(Ordering::Acquire)
        {
            SessionState::Busy
        } else if status == b'I' {
            SessionState::Idle
        } else {
            SessionState::InTransaction
        }
    }

    /// After a round trip on the connection has come back (so every request sent before it
    /// is answered), makes the counts agree with that.
    pub(crate) fn resync(&self) {
        let answered = self
            .answered
            .load(Ordering::Acquire)
            .wrapping_add(self.offset.load(Ordering::Relaxed));
        let behind = self
            .last_executing
            .load(Ordering::Acquire)
            .wrapping_sub(answered) as i32;
        if behind > 0 {
            self.offset.store(
                self.offset
                    .load(Ordering::Relaxed)
                    .wrapping_add(behind as u32),
                Ordering::Release,
            );
        }
    }

    /// Numbers a new request.
    fn next(&self) -> u32 {
        // One writer: loads and stores, no read-modify-write.
        let number = self.sent.load(Ordering::Relaxed).wrapping_add(1);
        self.sent.store(number, Ordering::Relaxed);
        number
    }

    fn executing(&self, number: u32) {
        self.last_executing.store(number, Ordering::Release);
    }

    fn answered(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        // A copy-in ends here. The `Sync` sent with its `Execute` reached the server during
        // the copy, which ignores a `Sync` then: this one answer covers both.
        let ended_copy = self.copying.load(Ordering::Relaxed);
        let answered = self
            .answered
            .load(Ordering::Relaxed)
            .wrapping_add(1 + u32::from(ended_copy));
        self.answered.store(answered, Ordering::Release);
        if ended_copy {
            self.copying.store(false, Ordering::Release);
        }
    }
}

/// Fills a five-byte header from `bytes` (four when `untyped`); returns the type byte (0 for
/// an untyped message) and the length once complete.
fn take_header(
    header: &mut [u8; 5],
    have: &mut usize,
    untyped: bool,
    bytes: &mut &[u8],
) -> Option<(u8, u32)> {
    let want = if untyped { 4 } else { 5 };
    let take = (want - *have).min(bytes.len());
    header[*have..*have + take].copy_from_slice(&bytes[..take]);
    *have += take;
    *bytes = &bytes[take..];
    if *have < want {
        return None;
    }
    *have = 0;
    let (kind, len) = if untyped {
        (0, [header[0], header[1], header[2], header[3]])
    } else {
        (header[0], [header[1], header[2], header[3], header[4]])
    };
    Some((kind, u32::from_be_bytes(len)))
}

/// Frames what the client writes and numbers the requests the server will answer.
#[derive(Debug)]
struct Writer {
    /// The next message has no type byte (the start-up message, or an `SSLRequest`).
    untyped: bool,
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current message still to pass.
    remaining: u32,
    /// The number of the extended-protocol group being sent (up to its `Sync`).
    group: Option<u32>,
}

impl Writer {
    fn new() -> Self {
        Writer {
            untyped: true,
            header: [0; 5],
            have: 0,
            remaining: 0,
            group: None,
        }
    }

    /// The number of the group being sent, opening one if none is.
    fn group(&mut self, state: &WireState) -> u32 {
        *self.group.get_or_insert_with(|| state.next())
    }

    /// Feeds bytes the stream accepted; `true` when they ended an `SSLRequest` (the server
    /// answers it with one unframed byte).
    fn feed(&mut self, state: &WireState, mut bytes: &[u8]) -> bool {
        let mut ssl_request = false;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining as usize).min(bytes.len());
                self.remaining -= take as u32;
                bytes = &bytes[take..];
                continue;
            }
            let untyped = self.untyped;
            let Some((kind, len)) =
                take_header(&mut self.header, &mut self.have, untyped, &mut bytes)
            else {
                break;
            };
            self.remaining = len.saturating_sub(4);
            if untyped {
                // An `SSLRequest` is exactly eight bytes; a start-up message is longer (it
                // holds at least the protocol version and the user's name). The start-up
                // message follows an `SSLRequest` and is answered by `ReadyForQuery`.
                if len == SSL_REQUEST_LEN {
                    ssl_request = true;
                } else {
                    self.untyped = false;
                    let number = state.next();
                    state.executing(number);
                }
                continue;
            }
            match kind {
                // Simple query and function call: answered on their own.
                b'Q' | b'F' => {
                    let number = state.next();
                    state.executing(number);
                }
                // Bind and Execute run a statement: the group counts from its first byte.
                b'B' | b'E' => {
                    let number = self.group(state);
                    state.executing(number);
                }
                // Parse, Describe, Close, Flush: a group that runs nothing (yet).
                b'P' | b'D' | b'C' | b'H' => {
                    self.group(state);
                }
                // Sync ends the group (the guard takes it); a Sync alone is a request of its own.
                b'S' if self.group.take().is_none() => {
                    state.next();
                }
                // Copy data, password messages, Terminate: no answer of their own.
                _ => {}
            }
        }
        ssl_request
    }
}

/// Frames what the server sends: publishes each `ReadyForQuery`'s status.
#[derive(Debug)]
struct Reader {
    /// The next byte is the server's one-byte answer to an `SSLRequest`.
    ssl_answer: bool,
    header: [u8; 5],
    have: usize,
    remaining: u32,
    /// The current message is a `ReadyForQuery` whose status byte is still to come.
    ready: bool,
}

impl Reader {
    fn new() -> Self {
        Reader {
            ssl_answer: false,
            header: [0; 5],
            have: 0,
            remaining: 0,
            ready: false,
        }
    }

    /// Feeds bytes read; `true` when the server accepted TLS (what follows is ciphertext,
    /// and this layer stops watching).
    fn feed(&mut self, state: &WireState, mut bytes: &[u8]) -> bool {
        while let Some(&first) = bytes.first() {
            if self.ssl_answer {
                self.ssl_answer = false;
                bytes = &bytes[1..];
                if first == b'S' {
                    return true;
                }
                continue;
            }
            if self.remaining > 0 {
                if self.ready {
                    self.ready = false;
                    state.answered(first);
                }
                let take = (self.remaining as usize).min(bytes.len());
                self.remaining -= take as u32;
                bytes = &bytes[take..];
                continue;
            }
            let Some((kind, len)) =
                take_header(&mut self.header, &mut self.have, false, &mut bytes)
            else {
                break;
            };
            self.remaining = len.saturating_sub(4);
            self.ready = kind == b'Z' && self.remaining > 0;
            if kind == b'G' {
                state.copying.store(true, Ordering::Release);
            }
        }
        false
    }
}

/// A stream that watches the protocol passing through it and publishes what it sees in a
/// [`WireState`].
#[derive(Debug)]
pub(crate) struct Wire<S> {
    inner: S,
    state: Arc<WireState>,
    writer: Writer,
    reader: Reader,
    /// Off once TLS has been negotiated over this stream (the layer above watches).
    watching: bool,
}

impl<S> Wire<S> {
    /// `watch`: off for a stream that carries only ciphertext from its first byte.
    pub(crate) fn new(inner: S, state: Arc<WireState>, watch: bool) -> Self {
        Wire {
            inner,
            state,
            writer: Writer::new(),
            reader: Reader::new(),
            watching: watch,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.watching {
            if let Poll::Ready(Ok(())) = poll {
                let read = &buf.filled()[before..];
                if this.reader.feed(&this.state, read) {
                    this.watching = false;
                }
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if this.watching {
            if let Poll::Ready(Ok(n)) = poll {
                if this.writer.feed(&this.state, &buf[..n]) {
                    this.reader.ssl_answer = true;
                }
            }
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Wire<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose streams are watched like the socket (see the module docs): the
/// watching continues above TLS once the server has accepted it.
#[derive(Debug)]
pub(crate) struct TrackTls<T> {
    pub(crate) inner: T,
    pub(crate) state: Arc<WireState>,
    /// The DSN named a host to verify; without one (a Unix socket, a bare `hostaddr`) TLS
    /// is refused, as tokio-postgres' own connect refuses it.
    pub(crate) has_hostname: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, T> TlsConnect<S> for TrackTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    type Stream = Wire<T::Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Stream, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let state = self.state;
        if !self.has_hostname {
            return Box::pin(async { Err("no hostname provided for TLS handshake".into()) });
        }
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            let stream = handshake.await.map_err(Into::into)?;
            Ok(Wire::new(stream, state, true))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn startup() -> Vec<u8> {
        let body = b"\0\x03\0\0user\0app\0\0";
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    /// Feeds `bytes` in pieces of `chunk` bytes.
    fn write_in(writer: &mut Writer, state: &WireState, bytes: &[u8], chunk: usize) -> bool {
        let mut ssl = false;
        for piece in bytes.chunks(chunk) {
            ssl |= writer.feed(state, piece);
        }
        ssl
    }

    fn read_in(reader: &mut Reader, state: &WireState, bytes: &[u8], chunk: usize) -> bool {
        let mut tls = false;
        for piece in bytes.chunks(chunk) {
            tls |= reader.feed(state, piece);
        }
        tls
    }

    #[test]
    fn a_session_is_idle_only_when_every_request_is_answered_with_status_i() {
        for chunk in [1, 2, 3, 7, 1000] {
            let state = WireState::default();
            let (mut w, mut r) = (Writer::new(), Reader::new());
            assert!(!write_in(&mut w, &state, &startup(), chunk));
            assert_eq!(state.session(), SessionState::Busy, "chunk {chunk}");
            let mut greeting = message(b'R', &[0, 0, 0, 0]);
            greeting.extend(message(b'S', b"TimeZone\0UTC\0"));
            greeting.extend(message(b'K', &[0; 8]));
            greeting.extend(message(b'Z', b"I"));
            read_in(&mut r, &state, &greeting, chunk);
            assert_eq!(state.session(), SessionState::Idle, "chunk {chunk}");

            // BEGIN by simple query, then an extended-protocol insert.
            write_in(&mut w, &state, &message(b'Q', b"BEGIN\0"), chunk);
            assert_eq!(state.session(), SessionState::Busy);
            read_in(&mut r, &state, &message(b'C', b"BEGIN\0"), chunk);
            assert_eq!(state.session(), SessionState::Busy);
            read_in(&mut r, &state, &message(b'Z', b"T"), chunk);
            assert_eq!(state.session(), SessionState::InTransaction);
            let mut insert = message(b'B', &[0; 12]);
            insert.extend(message(b'E', &[0; 5]));
            insert.extend(message(b'S', b""));
            write_in(&mut w, &state, &insert, chunk);
            assert_eq!(state.session(), SessionState::Busy);
            let mut reply = message(b'2', b"");
            reply.extend(message(b'E', b"SERROR\0C23505\0\0"));
            reply.extend(message(b'Z', b"E"));
            read_in(&mut r, &state, &reply, chunk);
            assert_eq!(state.session(), SessionState::InTransaction);
            write_in(&mut w, &state, &message(b'Q', b"ROLLBACK\0"), chunk);
            read_in(&mut r, &state, &message(b'C', b"ROLLBACK\0"), chunk);
            read_in(&mut r, &state, &message(b'Z', b"I"), chunk);
            assert_eq!(state.session(), SessionState::Idle, "chunk {chunk}");

            // A statement closed after use (Close + Sync) runs nothing: still idle while
            // its answer is on the way.
            let mut close = message(b'C', b"Ss0\0");
            close.extend(message(b'S', b""));
            write_in(&mut w, &state, &close, chunk);
            assert_eq!(state.session(), SessionState::Idle, "chunk {chunk}");
            // A prepare (Parse + Describe + Sync) neither.
            let mut prepare = message(b'P', b"s1\0BEGIN\0\0\0");
            prepare.extend(message(b'D', b"Ss1\0"));
            prepare.extend(message(b'S', b""));
            write_in(&mut w, &state, &prepare, chunk);
            assert_eq!(state.session(), SessionState::Idle, "chunk {chunk}");
            read_in(&mut r, &state, &message(b'3', b""), chunk);
            read_in(&mut r, &state, &message(b'Z', b"I"), chunk);
            read_in(&mut r, &state, &message(b'1', b""), chunk);
            read_in(&mut r, &state, &message(b'Z', b"I"), chunk);
            assert_eq!(state.session(), SessionState::Idle, "chunk {chunk}");
            // Executing it does.
            let mut execute = message(b'B', &[0; 12]);
            execute.extend(message(b'E', &[0; 5]));
            execute.extend(message(b'S', b""));
            write_in(&mut w, &state, &execute, chunk);
            assert_eq!(state.session(), SessionState::Busy, "chunk {chunk}");
            read_in(&mut r, &state, &message(b'C', b"BEGIN\0"), chunk);
            read_in(&mut r, &state, &message(b'Z', b"T"), chunk);
            assert_eq!(
                state.session(),
                SessionState::InTransaction,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_copy_in_is_busy_until_it_ends_and_leaves_the_counts_even() {
        for chunk in [1, 3, 1000] {
            let state = WireState::default();
            let (mut w, mut r) = (Writer::new(), Reader::new());
            write_in(&mut w, &state, &startup(), chunk);
            read_in(&mut r, &state, &message(b'Z', b"I"), chunk);
            // tokio-postgres' copy_in: Bind, Execute, Sync; then the data, CopyDone, Sync.
            let mut start = message(b'B', &[0; 12]);
            start.extend(message(b'E', &[0; 5]));
            start.extend(message(b'S', b""));
            write_in(&mut w, &state, &start, chunk);
            read_in(&mut r, &state, &message(b'2', b""), chunk);
            read_in(&mut r, &state, &message(b'G', &[0, 0, 0]), chunk);
            let mut data = message(b'd', b"1\n");
            data.extend(message(b'c', b""));
            write_in(&mut w, &state, &data, chunk);
            assert_eq!(state.session(), SessionState::Busy, "copying");
            write_in(&mut w, &state, &message(b'S', b""), chunk);
            read_in(&mut r, &state, &message(b'C', b"COPY 1\0"), chunk);
            assert_eq!(state.session(), SessionState::Busy);
            // One ReadyForQuery for both Syncs (the server ignored the first mid-copy).
            read_in(&mut r, &state, &message(b'Z', b"I"), chunk);
            assert_eq!(state.session(), SessionState::Idle, "chunk {chunk}");
            write_in(&mut w, &state, &message(b'Q', b"select 1\0"), chunk);
            assert_eq!(state.session(), SessionState::Busy);
            read_in(&mut r, &state, &message(b'Z', b"I"), chunk);
            assert_eq!(
                state.session(),
                SessionState::Idle,
                "chunk {chunk}: counts even"
            );
        }
    }

    #[test]
    fn a_resync_after_a_round_trip_repairs_a_miscount() {
        let state = WireState::default();
        let (mut w, mut r) = (Writer::new(), Reader::new());
        w.feed(&state, &startup());
        r.feed(&state, &message(b'Z', b"I"));
        // Two queries the server answered with one ReadyForQuery: the counts fall behind.
        w.feed(&state, &message(b'Q', b"a\0"));
        w.feed(&state, &message(b'Q', b"b\0"));
        r.feed(&state, &message(b'Z', b"I"));
        assert_eq!(state.session(), SessionState::Busy);
        state.resync();
        assert_eq!(state.session(), SessionState::Idle);
        w.feed(&state, &message(b'Q', b"c\0"));
        assert_eq!(
            state.session(),
            SessionState::Busy,
            "a new query still counts"
        );
        r.feed(&state, &message(b'Z', b"T"));
        assert_eq!(state.session(), SessionState::InTransaction);
    }

    #[test]
    fn an_accepted_ssl_request_hands_the_watching_to_the_tls_layer() {
        let state = WireState::default();
        let (mut w, mut r) = (Writer::new(), Reader::new());
        let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert!(w.feed(&state, &ssl_request));
        r.ssl_answer = true;
        assert!(r.feed(&state, b"S"), "the server accepted TLS");

        // Refused: the start-up follows in the clear and is watched here.
        let state = WireState::default();
        let (mut w, mut r) = (Writer::new(), Reader::new());
        assert!(w.feed(&state, &ssl_request));
        r.ssl_answer = true;
        let mut reply = b"N".to_vec();
        assert!(!w.feed(&state, &startup()));
        reply.extend(message(b'R', &[0, 0, 0, 0]));
        reply.extend(message(b'Z', b"I"));
        assert!(!r.feed(&state, &reply));
        assert_eq!(state.session(), SessionState::Idle);
    }
}
