//! The PostgreSQL connection manager: tokio-postgres connections opened over a socket the
//! pool watches (see [`wire`](super::wire)), so that a connection returned inside a
//! transaction is rolled back before anyone else gets it.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::wire::{SessionState, TrackTls, Wire, WireState};

/// A [`bb8::ManageConnection`] for PostgreSQL: tokio-postgres connections, opened the way
/// `tokio_postgres::Config::connect` opens them (every host and address in order, or
/// shuffled with `load_balance_hosts=random`; `hostaddr`, `connect_timeout`, keepalives,
/// `tcp_user_timeout`, `target_session_attrs`), over a socket whose protocol stream the pool
/// watches for the session's transaction status.
///
/// Connections are validated with an empty query and count as broken once the driver has
/// closed them, as with bb8-postgres.
pub struct PostgresManager<Tls = NoTls> {
    config: Config,
    tls: Tls,
}

impl<Tls> PostgresManager<Tls> {
    /// A manager connecting with `config` and the TLS connector `tls` (`NoTls` for none).
    pub fn new(config: Config, tls: Tls) -> Self {
        PostgresManager { config, tls }
    }

    /// The driver configuration it connects with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<Tls> fmt::Debug for PostgresManager<Tls> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres' own Debug hides the password.
        f.debug_struct("PostgresManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL connection from a [`PostgresManager`]: dereferences to the driver's
/// [`Client`].
pub struct PostgresConnection {
    client: Client,
    wire: Arc<WireState>,
    task: Arc<TaskState>,
    peer: Arc<Peer>,
}

impl PostgresConnection {
    /// The driver's client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session's state as the protocol stream shows it (no I/O): whether a transaction
    /// is open and whether a request is unanswered. Requests the driver has queued but not
    /// yet written are not counted yet.
    pub fn session_state(&self) -> SessionState {
        self.wire.session()
    }

    /// Whether the task driving the connection has been woken since it last ran: a request
    /// may be queued that the stream has not seen yet.
    pub(crate) fn unsettled(&self) -> bool {
        self.task.pending()
    }

    /// Where to leave this connection until its driver has run (see `connection::Park`).
    pub(crate) fn parking(&self) -> Arc<dyn crate::connection::Park> {
        self.task.clone()
    }

    /// Brings the session back to idle. First waits (briefly) for the driver's task to write
    /// what is queued; if the stream then shows the session idle, that is all (no I/O).
    /// Otherwise an empty query waits out every request sent before it, and a transaction
    /// left open or failed is rolled back. `Ok(true)` when it rolled one back, `Ok(false)`
    /// when there was nothing to undo (the driver's own rollback of a dropped `Transaction`
    /// is such a request); an error, or a session still not idle, means the connection must
    /// not be reused.
    pub(crate) async fn reset(&mut self) -> Result<bool, tokio_postgres::Error> {
        if self.task.pending() {
            let task = &self.task;
            let settled = async {
                loop {
                    let notified = task.settled.notified();
                    task.watched.store(true, Ordering::Release);
                    if !task.pending() {
                        break;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(SETTLE_WAIT, settled).await;
            task.watched.store(false, Ordering::Release);
        }
        if !self.task.pending() && self.wire.session() == SessionState::Idle {
            return Ok(false);
        }
        // Queued behind every request sent before it: once answered, the status is current.
        self.client.simple_query("").await?;
        self.wire.resync();
        match self.wire.session() {
            SessionState::Idle => return Ok(false),
            SessionState::InTransaction => {}
            SessionState::Busy => return Err(driver_error(not_idle()).await),
        }
        self.client.batch_execute("ROLLBACK").await?;
        match self.wire.session() {
            SessionState::Idle => Ok(true),
            _ => Err(driver_error(not_idle()).await),
        }
    }

    /// A token that cancels what this connection runs, from anywhere. It shadows the
    /// driver's `Client::cancel_token`, whose token cannot reach a server the pool
    /// connected to itself.
    pub fn cancel_token(&self) -> CancelToken {
        CancelToken {
            token: self.client.cancel_token(),
            peer: self.peer.clone(),
        }
    }
}

/// Cancels what a [`PostgresConnection`] runs, over a connection of its own to the same
/// server address (see [`PostgresConnection::cancel_token`]).
#[derive(Clone)]
pub struct CancelToken {
    token: tokio_postgres::CancelToken,
    peer: Arc<Peer>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("peer", &self.peer.addr)
            .finish_non_exhaustive()
    }
}

impl CancelToken {
    /// Sends the cancel request, with `tls` when the session used TLS.
    pub fn cancel_query<Tls>(
        &self,
        mut tls: Tls,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static
    where
        Tls: MakeTlsConnect<PgSocket> + Send + 'static,
        Tls::Stream: Send,
        Tls::TlsConnect: Send,
        <Tls::TlsConnect as TlsConnect<PgSocket>>::Future: Send,
    {
        let token = self.token.clone();
        let peer = self.peer.clone();
        async move {
            let socket = match open_socket(&peer.addr, &peer.socket).await {
                Ok(socket) => socket,
                Err(e) => return Err(driver_error(e).await),
            };
            let tls = tls
                .make_tls_connect(peer.hostname.as_deref().unwrap_or(""))
                .map_err(|e| io::Error::other(e.into()));
            let tls = match tls {
                Ok(tls) => tls,
                Err(e) => return Err(driver_error(e).await),
            };
            token.cancel_query_raw(socket, tls).await
        }
    }
}

/// How long a reset waits for the driver's task to finish what it is doing (it is often
/// still finishing the run that delivered the last answer when the connection is checked
/// out again) before it asks the server instead.
const SETTLE_WAIT: Duration = Duration::from_millis(20);

/// Whether the task driving a connection has been woken since it last ran. The driver wakes
/// it when a request is queued (and when the socket is ready); a request queued by a future
/// that was then dropped is written only when the task next runs, so until then the stream
/// cannot show it.
#[derive(Default)]
struct TaskState {
    wakes: AtomicU64,
    /// `wakes` as it was when the task last started running, stored when that run ended.
    seen: AtomicU64,
    waker: parking_lot::Mutex<Option<Waker>>,
    /// A reset waits for the task to catch up: told after each run while `watched`.
    settled: tokio::sync::Notify,
    watched: AtomicBool,
    /// A connection returned while the task had work queued, released after its next run
    /// (see `connection::Park`); `has_parked` says so without the lock.
    parked: parking_lot::Mutex<Option<crate::connection::Release>>,
    has_parked: AtomicBool,
    /// The connection future is gone (ended or dropped): the task runs no more, so nothing
    /// is pending however many wakes its last run left unseen.
    ended: AtomicBool,
}

impl std::fmt::Debug for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState")
            .field("pending", &self.pending())
            .field("parked", &self.has_parked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TaskState {
    fn pending(&self) -> bool {
        // SeqCst with the stores in `park`, `Driven::poll` and `Driven::drop`: either the
        // task sees a connection parked, or `park` sees that the task has run or ended (see
        // `park`).
        !self.ended.load(Ordering::SeqCst)
            && self.wakes.load(Ordering::SeqCst) != self.seen.load(Ordering::SeqCst)
    }

    fn take_parked(&self) -> Option<crate::connection::Release> {
        let release = self.parked.lock().take();
        if release.is_some() {
            self.has_parked.store(false, Ordering::SeqCst);
        }
        release
    }
}

impl crate::connection::Park for TaskState {
    fn park(&self, release: crate::connection::Release) -> Result<(), crate::connection::Release> {
        if !self.pending() {
            return Err(release);
        }
        *self.parked.lock() = Some(release);
        self.has_parked.store(true, Ordering::SeqCst);
        // The task may have finished its run (or ended) between the check above and the
        // store, and then not have seen the connection: if so, release it here (whoever
        // takes it first does; it is taken once).
        if !self.pending() {
            if let Some(release) = self.take_parked() {
                release();
            }
        }
        Ok(())
    }
}

impl Wake for TaskState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
        if let Some(waker) = &*self.waker.lock() {
            waker.wake_by_ref();
        }
    }
}

/// The driver's connection future, run with a waker that counts its wakes (see
/// [`TaskState`]).
struct Driven<F> {
    /// `None` once dropped (see the `Drop` impl).
    connection: Option<Pin<Box<F>>>,
    task: Arc<TaskState>,
    waker: Waker,
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut waker = this.task.waker.lock();
            match &*waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        let seen = this.task.wakes.load(Ordering::Acquire);
        let Some(connection) = this.connection.as_mut() else {
            return Poll::Pending;
        };
        let poll = connection
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker));
        this.task.seen.store(seen, Ordering::SeqCst);
        if this.task.watched.load(Ordering::Acquire) {
            this.task.settled.notify_waiters();
        }
        // A connection left here on return goes back once this run has written what was
        // queued (if nothing woke the task meanwhile; else after the next run).
        if this.task.has_parked.load(Ordering::SeqCst) && !this.task.pending() {
            if let Some(release) = this.task.take_parked() {
                release();
            }
        }
        poll
    }
}

impl<F> Drop for Driven<F> {
    fn drop(&mut self) {
        // The connection is over (closed, or its task dropped): a connection parked here
        // goes through its release once the connection itself is gone, so the client reads
        // as closed and bb8 closes it instead of keeping it.
        self.connection = None;
        // Before looking for a parked connection: a return that parks one after this look
        // sees the task ended and releases it itself. Without it, a wake during the last run
        // would leave the task pending for good, and a connection parked then would never
        // go back (bb8 would count it in use for ever).
        self.task.ended.store(true, Ordering::SeqCst);
        if let Some(release) = self.task.take_parked() {
            release();
        }
    }
}

fn not_idle() -> io::Error {
    io::Error::other("the session did not return to idle")
}

impl Deref for PostgresConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PostgresConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PostgresConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConnection")
            .field("peer", &self.peer.addr)
            .field("session", &self.wire.session())
            .finish_non_exhaustive()
    }
}

/// Where a connection went, for its cancel requests.
#[derive(Debug)]
struct Peer {
    addr: Addr,
    hostname: Option<String>,
    socket: SocketSettings,
}

#[derive(Debug, Clone)]
enum Addr {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
struct SocketSettings {
    connect_timeout: Option<Duration>,
    user_timeout: Option<Duration>,
    keepalive: Option<(Duration, Option<Duration>, Option<u32>)>,
}

impl SocketSettings {
    fn of(config: &Config) -> Self {
        SocketSettings {
            connect_timeout: config.get_connect_timeout().copied(),
            user_timeout: config.get_tcp_user_timeout().copied(),
            keepalive: config.get_keepalives().then(|| {
                (
                    config.get_keepalives_idle(),
                    config.get_keepalives_interval(),
                    config.get_keepalives_retries(),
                )
            }),
        }
    }
}

/// The socket a [`PostgresManager`] connects over (TCP or a Unix socket), watched for the
/// session's transaction status; TLS connectors (`MakeTlsConnect<PgSocket>`) wrap it.
#[derive(Debug)]
pub struct PgSocket(Wire<Stream>);

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for PgSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

async fn with_timeout<T>(
    limit: Option<Duration>,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out",
                ))
            }),
        None => connect.await,
    }
}

/// Opens a socket to `addr` with the driver's socket settings.
async fn open_socket(addr: &Addr, settings: &SocketSettings) -> io::Result<PgSocket> {
    open_watched(addr, settings, Arc::new(WireState::default()), false).await
}

/// Opens a socket to `addr`; a failure names the address (never a password: the DSN's
/// credentials are not part of it).
async fn open_watched(
    addr: &Addr,
    settings: &SocketSettings,
    state: Arc<WireState>,
    watch: bool,
) -> io::Result<PgSocket> {
    open_stream(addr, settings)
        .await
        .map(|stream| PgSocket(Wire::new(stream, state, watch)))
        .map_err(|e| {
            let at = match addr {
                Addr::Tcp(addr) => addr.to_string(),
                #[cfg(unix)]
                Addr::Unix(path) => path.display().to_string(),
            };
            io::Error::new(e.kind(), format!("could not connect to {at}: {e}"))
        })
}

async fn open_stream(addr: &Addr, settings: &SocketSettings) -> io::Result<Stream> {
    let stream = match addr {
        Addr::Tcp(addr) => {
            let stream = with_timeout(settings.connect_timeout, TcpStream::connect(addr)).await?;
            stream.set_nodelay(true)?;
            let socket = SockRef::from(&stream);
            #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
            if let Some(timeout) = settings.user_timeout {
                socket.set_tcp_user_timeout(Some(timeout))?;
            }
            if let Some((idle, interval, retries)) = settings.keepalive {
                let mut keepalive = TcpKeepalive::new().with_time(idle);
                #[cfg(not(any(
                    target_os = "openbsd",
                    target_os = "redox",
                    target_os = "solaris"
                )))]
                if let Some(interval) = interval {
                    keepalive = keepalive.with_interval(interval);
                }
                #[cfg(not(any(
                    target_os = "openbsd",
                    target_os = "redox",
                    target_os = "solaris",
                    target_os = "windows"
                )))]
                if let Some(retries) = retries {
                    keepalive = keepalive.with_retries(retries);
                }
                socket.set_tcp_keepalive(&keepalive)?;
            }
            Stream::Tcp(stream)
        }
        #[cfg(unix)]
        Addr::Unix(path) => {
            Stream::Unix(with_timeout(settings.connect_timeout, UnixStream::connect(path)).await?)
        }
    };
    Ok(stream)
}

/// A stream that fails every read and write with one I/O error.
struct Failing(Option<io::Error>);

impl Failing {
    fn error(&mut self) -> io::Error {
        self.0
            .take()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
    }
}

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(self.get_mut().error()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.get_mut().error()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The driver's own error for an I/O failure outside its reach (opening the socket, which
/// the pool does itself). tokio-postgres makes its errors privately, so the I/O error is
/// handed to it the one public way: a start-up over a stream that fails with that error.
/// The result reads "error communicating with the server: …" with the I/O error as its
/// source, and classifies as a connection error like any other.
async fn driver_error(error: io::Error) -> tokio_postgres::Error {
    let mut config = Config::new();
    config.user("postgres").ssl_mode(SslMode::Disable);
    match config.connect_raw(Failing(Some(error)), NoTls).await {
        Err(e) => e,
        Ok(_) => unreachable!("a start-up over a stream that fails every write cannot succeed"),
    }
}

/// One entry of the DSN's host list: what to connect to and the name TLS verifies (none for
/// a Unix socket or a bare `hostaddr`).
struct Target {
    host: Option<Host>,
    hostaddr: Option<std::net::IpAddr>,
    port: u16,
}

/// One address to try.
struct Candidate {
    addr: Addr,
    hostname: Option<String>,
}

/// The DSN's hosts, `hostaddr`s and ports, checked as `tokio_postgres::Config::connect`
/// checks them: the entries in order (shuffled with `load_balance_hosts=random`).
pub(crate) fn check_hosts(config: &Config) -> Result<(), String> {
    let (hosts, hostaddrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    if hosts.is_empty() && hostaddrs.is_empty() {
        return Err("both host and hostaddr are missing".into());
    }
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return Err(format!(
            "number of hosts ({}) is different from number of hostaddrs ({})",
            hosts.len(),
            hostaddrs.len()
        ));
    }
    let count = hosts.len().max(hostaddrs.len());
    if ports.len() > 1 && ports.len() != count {
        return Err(format!(
            "number of ports ({}) is neither 1 nor the number of hosts ({count})",
            ports.len()
        ));
    }
    Ok(())
}

impl<Tls> PostgresManager<Tls>
where
    Tls: MakeTlsConnect<PgSocket> + Clone + Send + Sync + 'static,
    Tls::Stream: Send + Sync + 'static,
    Tls::TlsConnect: Send + 'static,
    <Tls::TlsConnect as TlsConnect<PgSocket>>::Future: Send + 'static,
{
    fn targets(&self) -> Result<Vec<Target>, io::Error> {
        let config = &self.config;
        check_hosts(config).map_err(|text| io::Error::new(io::ErrorKind::InvalidInput, text))?;
        let (hosts, hostaddrs, ports) = (
            config.get_hosts(),
            config.get_hostaddrs(),
            config.get_ports(),
        );
        let mut targets: Vec<Target> = (0..hosts.len().max(hostaddrs.len()))
            .map(|i| Target {
                host: hosts.get(i).cloned(),
                hostaddr: hostaddrs.get(i).copied(),
                port: ports.get(i).or(ports.first()).copied().unwrap_or(5432),
            })
            .collect();
        if self.random() {
            fastrand::shuffle(&mut targets);
        }
        Ok(targets)
    }

    fn random(&self) -> bool {
        self.config.get_load_balance_hosts() == LoadBalanceHosts::Random
    }

    /// The addresses of one target, resolved only when it is reached (a slow lookup of a
    /// fallback host never delays the first).
    async fn resolve(&self, target: &Target) -> io::Result<Vec<Candidate>> {
        let hostname = match &target.host {
            Some(Host::Tcp(name)) => Some(name.clone()),
            _ => None,
        };
        if let Some(ip) = target.hostaddr {
            return Ok(vec![Candidate {
                addr: Addr::Tcp(SocketAddr::new(ip, target.port)),
                hostname,
            }]);
        }
        match &target.host {
            Some(Host::Tcp(name)) => {
                let mut addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host((name.as_str(), target.port))
                        .await?
                        .collect();
                if self.random() {
                    fastrand::shuffle(&mut addrs);
                }
                Ok(addrs
                    .into_iter()
                    .map(|addr| Candidate {
                        addr: Addr::Tcp(addr),
                        hostname: hostname.clone(),
                    })
                    .collect())
            }
            #[cfg(unix)]
            Some(Host::Unix(dir)) => Ok(vec![Candidate {
                addr: Addr::Unix(dir.join(format!(".s.PGSQL.{}", target.port))),
                hostname: None,
            }]),
            _ => Ok(Vec::new()),
        }
    }

    async fn connect_to(
        &self,
        candidate: Candidate,
        settings: &SocketSettings,
    ) -> Result<PostgresConnection, tokio_postgres::Error> {
        let wire = Arc::new(WireState::default());
        let no_tls = std::any::TypeId::of::<Tls>() == std::any::TypeId::of::<NoTls>();
        // With `sslnegotiation=direct` the TLS handshake starts at the first byte: the
        // socket carries only ciphertext, and the watching happens above TLS alone.
        let watch_socket = no_tls || self.config.get_ssl_negotiation() != SslNegotiation::Direct;
        let socket = match open_watched(&candidate.addr, settings, wire.clone(), watch_socket).await
        {
            Ok(socket) => socket,
            Err(e) => return Err(driver_error(e).await),
        };
        let (client, task) = if no_tls {
            // NoTls declines TLS without asking the server (the watched socket carries the
            // whole session); a wrapper around it could not say so.
            let (client, connection) = self.config.connect_raw(socket, NoTls).await?;
            (client, spawn_connection(connection))
        } else {
            let tls = self
                .tls
                .clone()
                .make_tls_connect(candidate.hostname.as_deref().unwrap_or(""))
                .map_err(|e| io::Error::other(e.into()));
            let tls = match tls {
                Ok(tls) => tls,
                Err(e) => return Err(driver_error(e).await),
            };
            let tls = TrackTls {
                inner: tls,
                state: wire.clone(),
                has_hostname: candidate.hostname.is_some(),
            };
            let (client, connection) = self.config.connect_raw(socket, tls).await?;
            (client, spawn_connection(connection))
        };
        self.check_session_attrs(&client).await?;
        Ok(PostgresConnection {
            client,
            wire,
            task,
            peer: Arc::new(Peer {
                addr: candidate.addr,
                hostname: candidate.hostname,
                socket: settings.clone(),
            }),
        })
    }

    /// `target_session_attrs=read-write` or `read-only`, checked as the driver does.
    async fn check_session_attrs(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let want_read_only = match self.config.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => false,
            TargetSessionAttrs::ReadOnly => true,
            _ => return Ok(()),
        };
        for message in client.simple_query("SHOW transaction_read_only").await? {
            if let SimpleQueryMessage::Row(row) = message {
                let read_only = row.try_get(0)?;
                let text = match (want_read_only, read_only) {
                    (false, Some("on")) => "database does not allow writes",
                    (true, Some("off")) => "database is not read only",
                    _ => return Ok(()),
                };
                return Err(
                    driver_error(io::Error::new(io::ErrorKind::PermissionDenied, text)).await,
                );
            }
        }
        Ok(())
    }
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>) -> Arc<TaskState>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let task = Arc::new(TaskState::default());
    let driven = Driven {
        connection: Some(Box::pin(connection)),
        waker: Waker::from(task.clone()),
        task: task.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = driven.await {
            tracing::debug!(error = %e, "postgresql connection ended");
        }
    });
    task
}

impl<Tls> bb8::ManageConnection for PostgresManager<Tls>
where
    Tls: MakeTlsConnect<PgSocket> + Clone + Send + Sync + 'static,
    Tls::Stream: Send + Sync + 'static,
    Tls::TlsConnect: Send + 'static,
    <Tls::TlsConnect as TlsConnect<PgSocket>>::Future: Send + 'static,
{
    type Connection = PostgresConnection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PostgresConnection, tokio_postgres::Error> {
        let targets = match self.targets() {
            Ok(targets) => targets,
            Err(e) => return Err(driver_error(e).await),
        };
        let settings = SocketSettings::of(&self.config);
        let mut last_error = None;
        for target in targets {
            let candidates = match self.resolve(&target).await {
                Ok(candidates) => candidates,
                Err(e) => {
                    last_error = Some(driver_error(e).await);
                    continue;
                }
            };
            for candidate in candidates {
                match self.connect_to(candidate, &settings).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => last_error = Some(e),
                }
            }
        }
        Err(match last_error {
            Some(e) => e,
            None => {
                driver_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "could not resolve any addresses",
                ))
                .await
            }
        })
    }

    async fn is_valid(&self, conn: &mut PostgresConnection) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut PostgresConnection) -> bool {
        conn.client.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::{Driven, TaskState};
    use crate::connection::Park;

    /// A connection future whose last run is woken while it runs (a socket that became
    /// readable as it closed) and then ends.
    struct EndsWokenUp;

    impl Future for EndsWokenUp {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            cx.waker().wake_by_ref();
            Poll::Ready(())
        }
    }

    fn driven(task: &Arc<TaskState>) -> Driven<EndsWokenUp> {
        Driven {
            connection: Some(Box::pin(EndsWokenUp)),
            waker: Waker::from(task.clone()),
            task: task.clone(),
        }
    }

    fn counting(released: &Arc<AtomicUsize>) -> crate::connection::Release {
        let released = released.clone();
        Box::new(move || {
            released.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn a_connection_returned_after_its_driver_ended_is_released_at_once() {
        let task = Arc::new(TaskState::default());
        let mut connection = driven(&task);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut connection).poll(&mut cx), Poll::Ready(()));
        // Woken during its last run: the counters alone still say "pending".
        assert_ne!(
            task.wakes.load(Ordering::SeqCst),
            task.seen.load(Ordering::SeqCst)
        );
        drop(connection);
        assert!(!task.pending());
        let released = Arc::new(AtomicUsize::new(0));
        assert!(task.park(counting(&released)).is_err());
        assert!(!task.has_parked.load(Ordering::SeqCst));
    }

    #[test]
    fn a_connection_parked_before_its_driver_ends_is_released_by_the_end() {
        let task = Arc::new(TaskState::default());
        let connection = driven(&task);
        // A request queued that the task has not run for yet.
        Waker::from(task.clone()).wake_by_ref();
        let released = Arc::new(AtomicUsize::new(0));
        assert!(task.park(counting(&released)).is_ok());
        assert_eq!(released.load(Ordering::SeqCst), 0);
        drop(connection);
        assert_eq!(released.load(Ordering::SeqCst), 1);
        assert!(task.take_parked().is_none());
    }
}
