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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, TargetSessionAttrs};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::wire::{Session, TrackTls, Wire, WireState};

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
    peer: Arc<Peer>,
}

impl PostgresConnection {
    /// The driver's client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn session(&self) -> Session {
        self.wire.session()
    }

    /// Brings the session back to idle: waits (with an empty query) for requests still
    /// queued on it, then rolls back a transaction left open or failed. `Ok(true)` when it
    /// rolled one back, `Ok(false)` when the session was idle once the queue drained (the
    /// driver's own rollback of a dropped `Transaction` is such a request); an error, or a
    /// session still not idle, means the connection must not be reused.
    pub(crate) async fn reset(&mut self) -> Result<bool, tokio_postgres::Error> {
        // Queued behind every request sent before it: once answered, the status is current.
        self.client.simple_query("").await?;
        match self.wire.session() {
            Session::Idle => return Ok(false),
            Session::InTransaction => {}
            Session::Busy => return Err(driver_error(not_idle()).await),
        }
        self.client.batch_execute("ROLLBACK").await?;
        match self.wire.session() {
            Session::Idle => Ok(true),
            _ => Err(driver_error(not_idle()).await),
        }
    }

    /// Asks the server to cancel what this connection is running, on a connection of its
    /// own to the same address, with `tls`; the future is `'static` so it can be spawned.
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
        let token = self.client.cancel_token();
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
    let state = Arc::new(WireState::default());
    open_watched(addr, settings, state).await
}

/// Opens a socket to `addr`; a failure names the address (never a password: the DSN's
/// credentials are not part of it).
async fn open_watched(
    addr: &Addr,
    settings: &SocketSettings,
    state: Arc<WireState>,
) -> io::Result<PgSocket> {
    open_stream(addr, settings)
        .await
        .map(|stream| PgSocket(Wire::new(stream, state)))
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

/// One address to try, with the name TLS verifies (none for a Unix socket or a bare
/// `hostaddr`).
struct Candidate {
    addr: Addr,
    hostname: Option<String>,
}

impl<Tls> PostgresManager<Tls>
where
    Tls: MakeTlsConnect<PgSocket> + Clone + Send + Sync + 'static,
    Tls::Stream: Send + Sync + 'static,
    Tls::TlsConnect: Send + 'static,
    <Tls::TlsConnect as TlsConnect<PgSocket>>::Future: Send + 'static,
{
    /// Every address to try, in the driver's order.
    async fn candidates(&self) -> Result<Vec<Candidate>, io::Error> {
        let config = &self.config;
        let (hosts, hostaddrs, ports) = (
            config.get_hosts(),
            config.get_hostaddrs(),
            config.get_ports(),
        );
        let invalid = |text: String| io::Error::new(io::ErrorKind::InvalidInput, text);
        if hosts.is_empty() && hostaddrs.is_empty() {
            return Err(invalid("both host and hostaddr are missing".into()));
        }
        if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
            return Err(invalid(format!(
                "number of hosts ({}) is different from number of hostaddrs ({})",
                hosts.len(),
                hostaddrs.len()
            )));
        }
        let count = hosts.len().max(hostaddrs.len());
        if ports.len() > 1 && ports.len() != count {
            return Err(invalid("invalid number of ports".into()));
        }
        let random = config.get_load_balance_hosts() == LoadBalanceHosts::Random;
        let mut order: Vec<usize> = (0..count).collect();
        if random {
            fastrand::shuffle(&mut order);
        }
        let mut candidates = Vec::new();
        let mut last_error = None;
        for i in order {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let host = hosts.get(i);
            let hostname = match host {
                Some(Host::Tcp(name)) => Some(name.clone()),
                _ => None,
            };
            if let Some(ip) = hostaddrs.get(i) {
                candidates.push(Candidate {
                    addr: Addr::Tcp(SocketAddr::new(*ip, port)),
                    hostname,
                });
                continue;
            }
            match host {
                Some(Host::Tcp(name)) => match tokio::net::lookup_host((name.as_str(), port)).await
                {
                    Ok(addrs) => {
                        let mut addrs: Vec<SocketAddr> = addrs.collect();
                        if random {
                            fastrand::shuffle(&mut addrs);
                        }
                        candidates.extend(addrs.into_iter().map(|addr| Candidate {
                            addr: Addr::Tcp(addr),
                            hostname: hostname.clone(),
                        }));
                    }
                    Err(e) => last_error = Some(e),
                },
                #[cfg(unix)]
                Some(Host::Unix(dir)) => candidates.push(Candidate {
                    addr: Addr::Unix(dir.join(format!(".s.PGSQL.{port}"))),
                    hostname: None,
                }),
                None => {}
            }
        }
        if candidates.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "could not resolve any addresses",
                )
            }));
        }
        Ok(candidates)
    }

    async fn connect_to(
        &self,
        candidate: Candidate,
        settings: &SocketSettings,
    ) -> Result<PostgresConnection, tokio_postgres::Error> {
        let wire = Arc::new(WireState::default());
        let socket = match open_watched(&candidate.addr, settings, wire.clone()).await {
            Ok(socket) => socket,
            Err(e) => return Err(driver_error(e).await),
        };
        let client = if std::any::TypeId::of::<Tls>() == std::any::TypeId::of::<NoTls>() {
            // NoTls declines TLS without asking the server (the watched socket carries the
            // whole session); a wrapper around it could not say so.
            let (client, connection) = self.config.connect_raw(socket, NoTls).await?;
            spawn_connection(connection);
            client
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
            };
            let (client, connection) = self.config.connect_raw(socket, tls).await?;
            spawn_connection(connection);
            client
        };
        self.check_session_attrs(&client).await?;
        Ok(PostgresConnection {
            client,
            wire,
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

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgresql connection ended");
        }
    });
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
        let candidates = match self.candidates().await {
            Ok(candidates) => candidates,
            Err(e) => return Err(driver_error(e).await),
        };
        let settings = SocketSettings::of(&self.config);
        let mut last_error = None;
        for candidate in candidates {
            match self.connect_to(candidate, &settings).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("candidates() returns at least one address"))
    }

    async fn is_valid(&self, conn: &mut PostgresConnection) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut PostgresConnection) -> bool {
        conn.client.is_closed()
    }
}
