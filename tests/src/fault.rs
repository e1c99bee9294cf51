//! The fault suite's parts: a small service on the pool, a bounded load with counted
//! acknowledgements, a TCP proxy that can black-hole or cut connections, and the checks run
//! after every fault.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use pool_core::postgres::tokio_postgres::{self, NoTls};
use pool_core::postgres::PostgresManager;
use pool_core::{BreakerConfig, PoolBuilder, PostgresPool};
use pool_tower::{Db, DbError, PoolLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type Pg = PostgresManager<NoTls>;

/// The timeouts every scenario runs with, and the bound they give a request.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// The breaker's operation timeout.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// What a loaded two-core machine may add to a request beyond its timeouts.
pub const MARGIN: Duration = Duration::from_secs(2);
/// The longest any request may take: a checkout (validation included) and one operation,
/// each at its timeout, plus the margin.
pub const REQUEST_BOUND: Duration = Duration::from_secs(
    CHECKOUT_TIMEOUT.as_secs() + OPERATION_TIMEOUT.as_secs() + MARGIN.as_secs(),
);
/// The pool's base size.
pub const BASE: u32 = 4;
/// Idle timeout for connections above the base.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pool on `url`, with the suite's short timeouts; `application_name` names its sessions.
pub fn pool(url: &str, application_name: &str) -> PostgresPool {
    let sep = if url.contains('?') { '&' } else { '?' };
    PoolBuilder::postgres()
        .database_url(&format!("{url}{sep}application_name={application_name}"))
        .base_size(BASE)
        .max_overflow(4)
        .checkout_timeout(CHECKOUT_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .validation_timeout(Duration::from_secs(1))
        .idle_timeout(IDLE_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(2))
        .tcp_user_timeout(Duration::from_secs(2))
        .health_interval(Duration::from_secs(1))
        // The product's breaker defaults (threshold 5, probes backing off to once a second,
        // 3 in a row to close), with the suite's operation timeout.
        .breaker(BreakerConfig {
            operation_timeout: OPERATION_TIMEOUT,
            ..BreakerConfig::default()
        })
        .build_postgres()
        .unwrap()
}

/// An acknowledged write in a transaction of its own: a connection handed on with another
/// borrower's transaction still open would make this `BEGIN` a no-op and the `COMMIT` commit
/// that borrower's rows too.
async fn write(db: Db<Pg>, Path(id): Path<i64>) -> Result<&'static str, DbError> {
    let conn = db.conn().await?;
    conn.batch_execute(&format!(
        "begin; insert into fault_acks (id) values ({id}); commit"
    ))
    .await
    .map_err(DbError::query)?;
    Ok("ok")
}

async fn slow(db: Db<Pg>, Path(ms): Path<i64>) -> Result<&'static str, DbError> {
    let conn = db.conn().await?;
    conn.execute("select pg_sleep($1::float8 / 1000)", &[&(ms as f64)])
        .await
        .map_err(DbError::query)?;
    Ok("ok")
}

/// A handler with a bug: it opens a transaction, inserts `id` and returns without `COMMIT`.
async fn leave_open(db: Db<Pg>, Path(id): Path<i64>) -> Result<&'static str, DbError> {
    let conn = db.conn().await?;
    conn.batch_execute(&format!("begin; insert into fault_acks (id) values ({id})"))
        .await
        .map_err(DbError::query)?;
    Ok("left open")
}

/// The service under test on 127.0.0.1: `POST /write/{id}` inserts an acknowledged row,
/// `GET /slow/{ms}` holds its connection in `pg_sleep`, `POST /leave-open/{id}` inserts a row
/// inside a transaction it never commits.
pub async fn serve(pool: &PostgresPool) -> SocketAddr {
    let app = Router::new()
        .route("/write/{id}", post(write))
        .route("/leave-open/{id}", post(leave_open))
        .route("/slow/{ms}", get(slow))
        .layer(PoolLayer::new(pool.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A PostgreSQL server of the scenario's own (started and removed by `scripts/pg.sh` on
/// `port`), for faults the shared server must not feel: stops, crashes, kills.
#[derive(Debug)]
pub struct PrivateServer {
    port: u16,
    /// Its URL (superuser).
    pub url: String,
}

impl PrivateServer {
    /// A fresh server on `port`.
    pub fn start(port: u16) -> PrivateServer {
        let mut server = PrivateServer {
            port,
            url: String::new(),
        };
        server.ctl("destroy");
        server.url = server.ctl("start");
        server
    }

    /// Runs `scripts/pg.sh action` for it (`crash`, `kill9`, `restart`, …); its output.
    pub fn ctl(&self, action: &str) -> String {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(action)
            .env("PGPORT", self.port.to_string())
            .env_remove("PG_ROOT")
            .output()
            .expect("bash runs");
        assert!(
            out.status.success() || action == "destroy",
            "pg.sh {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.ctl("destroy");
    }
}

/// An administrative connection (not through the pool).
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// One scenario's parts: an administrative connection, the pool (its sessions named
/// `app` on the server), and the service on it.
#[derive(Debug)]
pub struct Scenario {
    /// Not through the pool.
    pub admin: tokio_postgres::Client,
    /// The pool under test.
    pub pool: PostgresPool,
    /// The service's address on 127.0.0.1.
    pub addr: SocketAddr,
    /// The pool's `application_name`.
    pub app: &'static str,
    started: Instant,
}

impl Scenario {
    /// An empty table of acknowledged writes (through `admin_url`), a warmed-up pool on
    /// `pool_url`, and the service on it.
    pub async fn start(admin_url: &str, pool_url: &str, app: &'static str) -> Scenario {
        let started = Instant::now();
        let admin = admin(admin_url).await;
        prepare(&admin).await;
        let pool = pool(pool_url, app);
        pool.warm_up().await.unwrap();
        let addr = serve(&pool).await;
        Scenario {
            admin,
            pool,
            addr,
            app,
            started,
        }
    }

    /// The checks after the fault ([`assert_recovered`]), then the scenario's time printed.
    pub async fn finish(&self, report: &Report) {
        assert_recovered(&self.pool, &self.admin, self.app, report).await;
        println!(
            "{}: scenario and recovery took {:.1} s",
            self.app,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// An empty table of acknowledged writes.
pub async fn prepare(admin: &tokio_postgres::Client) {
    admin
        .batch_execute("create table if not exists fault_acks (id bigint primary key)")
        .await
        .unwrap();
    admin.batch_execute("truncate fault_acks").await.unwrap();
}

/// One request's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// HTTP status, or 0 when the exchange itself failed.
    pub status: u16,
    /// How long it took.
    pub took: Duration,
    /// When it ended.
    pub at: Instant,
    /// Its `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
}

/// A request over a fresh connection, given up (status 0) after `limit`.
pub async fn request(addr: SocketAddr, method: &str, path: &str, limit: Duration) -> Outcome {
    let start = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse::<u16>().ok()?;
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let retry_after = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().ok())
                .flatten()
        });
        Some((status, retry_after))
    };
    let (status, retry_after) = tokio::time::timeout(limit, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, None));
    Outcome {
        status,
        took: start.elapsed(),
        at: Instant::now(),
        retry_after,
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Every request's outcome, in completion order.
    pub outcomes: Vec<Outcome>,
    /// Ids whose write was acknowledged (200).
    pub acked: Vec<i64>,
}

impl Report {
    /// The slowest request.
    pub fn slowest(&self) -> Duration {
        self.outcomes
            .iter()
            .map(|o| o.took)
            .max()
            .unwrap_or_default()
    }

    /// Requests answered with `status`.
    pub fn count(&self, status: u16) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }

    /// A one-line summary for the test's output and the docs.
    pub fn summary(&self) -> String {
        let mut statuses: Vec<(u16, usize)> = Vec::new();
        for o in &self.outcomes {
            match statuses.iter_mut().find(|(s, _)| *s == o.status) {
                Some((_, n)) => *n += 1,
                None => statuses.push((o.status, 1)),
            }
        }
        statuses.sort_unstable();
        let mut took: Vec<Duration> = self.outcomes.iter().map(|o| o.took).collect();
        took.sort_unstable();
        let p99 = took
            .get(took.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or_default();
        format!(
            "{} requests {:?}, {} writes acknowledged, p99 {:.0} ms, max {:.0} ms",
            self.outcomes.len(),
            statuses,
            self.acked.len(),
            p99.as_secs_f64() * 1e3,
            self.slowest().as_secs_f64() * 1e3
        )
    }
}

/// `clients` concurrent clients writing for `duration` (and at most `max_requests` requests
/// in all); each request is given up after twice the request bound, so a hang is measured,
/// not waited out.
pub async fn load(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    max_requests: u64,
) -> Report {
    // Ids are unique in the process, so loads one after another never collide.
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let sent = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(Report::default()));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let sent = sent.clone();
        let report = report.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if sent.fetch_add(1, SeqCst) >= max_requests {
                    break;
                }
                let id = NEXT_ID.fetch_add(1, SeqCst);
                let outcome =
                    request(addr, "POST", &format!("/write/{id}"), REQUEST_BOUND * 2).await;
                {
                    let mut report = report.lock().unwrap();
                    if outcome.status == 200 {
                        report.acked.push(id as i64);
                    }
                    report.outcomes.push(outcome);
                }
                if outcome.status != 200 {
                    // A refused request comes back at once: pace the retries a little.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(report)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

/// Waits (bounded) until no session of the pool is still running a query the pool gave up
/// on: the cancel request it sends reached the server.
pub async fn assert_no_orphaned_query(admin: &tokio_postgres::Client, application_name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where application_name = $1 \
                 and state = 'active' and query like '%pg_sleep%'",
                &[&application_name],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{running} abandoned queries still run on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The checks after every fault: every acknowledged write is in the table, no session of
/// the pool is left idle in a transaction, and the pool comes to rest at exactly its base
/// (size = idle = base) within the idle timeout plus a margin.
pub async fn assert_recovered(
    pool: &PostgresPool,
    admin: &tokio_postgres::Client,
    application_name: &str,
    report: &Report,
) {
    let rows: std::collections::HashSet<i64> = admin
        .query("select id from fault_acks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<_> = report
        .acked
        .iter()
        .filter(|id| !rows.contains(id))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let deadline = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(15);
    loop {
        let s = pool.stats();
        let stuck: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where application_name = $1 \
                 and state like 'idle in transaction%'",
                &[&application_name],
            )
            .await
            .unwrap()
            .get(0);
        if s.size == BASE && s.idle == BASE && s.in_use == 0 && stuck == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not at rest: size {} idle {} in use {} idle-in-transaction {stuck}; {s:?}",
            s.size,
            s.idle,
            s.in_use
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the proxy treats traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Bytes flow.
    Forward,
    /// Connections are accepted and bytes read (so TCP acknowledges them) but nothing is
    /// passed on: a middlebox that hangs. Connections black-holed stay dead afterwards.
    BlackHole,
}

/// A TCP proxy in front of PostgreSQL, written for the tests: it can hang (see
/// [`ProxyMode::BlackHole`]) or cut every established connection. Used because no real
/// middlebox can be told to do either on cue.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<(ProxyMode, u64)>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel((ProxyMode::Forward, 0u64));
        let (cut, cut_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode_rx = mode_rx.clone();
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let (accepted_mode, generation) = *mode_rx.borrow();
                    if accepted_mode == ProxyMode::BlackHole {
                        swallow(client).await;
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let live = move || *mode_rx.borrow() == (ProxyMode::Forward, generation);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pipe(cr, sw, live.clone());
                    let down = pipe(sr, cw, live);
                    cut_rx.borrow_and_update();
                    // Either side closing, or a cut, ends both.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, mode, cut }
    }

    /// From now on, hang every connection, established or new.
    pub fn black_hole(&self) {
        self.mode.send_modify(|(mode, generation)| {
            *mode = ProxyMode::BlackHole;
            *generation += 1;
        });
    }

    /// New connections flow again (black-holed ones stay dead).
    pub fn forward(&self) {
        self.mode.send_modify(|(mode, generation)| {
            *mode = ProxyMode::Forward;
            *generation += 1;
        });
    }

    /// Closes every established connection at once.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn swallow(mut stream: TcpStream) {
    let mut buf = [0u8; 8192];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    live: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Black-holed: read (so the sender's TCP is acknowledged) and drop.
        if live() && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
