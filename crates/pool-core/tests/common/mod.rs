//! Helpers shared by the integration tests: the PostgreSQL gate, a recording observer, an
//! in-memory connection manager, and a log capture.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::Write;
use std::panic::Location;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::{
    BreakerState, CheckoutOutcome, CloseReason, PoolEvent, PoolObserver, TransitionReason,
    UtilizationLevel,
};
use tokio::sync::Notify;

/// The URL of the test server, or `None` (with a line on stderr) when there is none.
/// With `CI=true` a missing server fails the test instead: CI must never skip silently.
pub fn pg_url(test: &str) -> Option<String> {
    match std::env::var("POOL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: POOL_TEST_DATABASE_URL is not set and CI=true; PostgreSQL tests may not be skipped in CI (run scripts/test.sh)");
            }
            // Written past the test harness's capture so the skip is visible in plain `cargo test`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no PostgreSQL (set POOL_TEST_DATABASE_URL or run scripts/test.sh)"
            );
            None
        }
    }
}

/// A second, private PostgreSQL server that a test may crash and restart without
/// disturbing the others. Destroyed on drop.
pub struct PrivateServer {
    port: u16,
    pub url: String,
}

fn pg_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh")
}

impl PrivateServer {
    pub fn start(port: u16) -> PrivateServer {
        let mut server = PrivateServer {
            port,
            url: String::new(),
        };
        server.ctl("destroy");
        server.url = server.ctl("start");
        server
    }

    pub fn ctl(&self, action: &str) -> String {
        let out = Command::new("bash")
            .arg(pg_script())
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

/// An owned copy of a [`PoolEvent`].
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    Checkout(CheckoutOutcome),
    Returned,
    Created {
        ok: bool,
        error: Option<String>,
    },
    Closed(CloseReason),
    Breaker {
        from: BreakerState,
        to: BreakerState,
        reason: TransitionReason,
    },
    Level {
        from: UtilizationLevel,
        to: UtilizationLevel,
    },
    Leak {
        location: &'static Location<'static>,
    },
    LeakReturned {
        location: &'static Location<'static>,
    },
    Recycle {
        idle_closed: u64,
        checked_out: u64,
    },
    Health(bool),
}

#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Recorded>>,
    changed: Notify,
}

impl PoolObserver for Recorder {
    fn on_event(&self, _pool: &str, event: &PoolEvent<'_>) {
        let recorded = match event {
            PoolEvent::Checkout { outcome, .. } => Recorded::Checkout(*outcome),
            PoolEvent::Returned { .. } => Recorded::Returned,
            PoolEvent::ConnectionCreated { error, .. } => Recorded::Created {
                ok: error.is_none(),
                error: error.map(str::to_owned),
            },
            PoolEvent::ConnectionClosed { reason } => Recorded::Closed(*reason),
            PoolEvent::BreakerTransition(t) => Recorded::Breaker {
                from: t.from,
                to: t.to,
                reason: t.reason,
            },
            PoolEvent::UtilizationChanged { from, to, .. } => Recorded::Level {
                from: *from,
                to: *to,
            },
            PoolEvent::LeakSuspected { location, .. } => Recorded::Leak { location },
            PoolEvent::LeakReturned { location, .. } => Recorded::LeakReturned { location },
            PoolEvent::ForcedRecycle {
                idle_closed,
                checked_out,
            } => Recorded::Recycle {
                idle_closed: *idle_closed,
                checked_out: *checked_out,
            },
            PoolEvent::HealthCheck { ok } => Recorded::Health(*ok),
            _ => return,
        };
        self.events.lock().unwrap().push(recorded);
        self.changed.notify_waiters();
    }
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    pub fn events(&self) -> Vec<Recorded> {
        self.events.lock().unwrap().clone()
    }

    pub fn count(&self, f: impl Fn(&Recorded) -> bool) -> usize {
        self.events.lock().unwrap().iter().filter(|e| f(e)).count()
    }

    pub fn transitions(&self) -> Vec<(BreakerState, BreakerState)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Recorded::Breaker { from, to, .. } => Some((from, to)),
                _ => None,
            })
            .collect()
    }

    /// The utilization level changes, in order.
    pub fn levels(&self) -> Vec<(UtilizationLevel, UtilizationLevel)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Recorded::Level { from, to } => Some((from, to)),
                _ => None,
            })
            .collect()
    }

    /// Waits until an event matching `f` has been recorded, at most `limit`.
    pub async fn wait_for(&self, limit: Duration, f: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if let Some(e) = self.events().into_iter().find(|e| f(e)) {
                return e;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "no matching event within {limit:?}; got {:#?}",
                    self.events()
                );
            }
        }
    }
}

/// An in-memory connection, numbered from 1.
#[derive(Debug)]
pub struct MemConn {
    pub id: u64,
}

/// A manager whose connections are numbers; it can be told to fail connects or pings, and
/// counts what it was asked to do. Used where a real database cannot produce the fault (or
/// would make time-dependent tests need real time).
#[derive(Debug, Default)]
pub struct MemState {
    pub connects: AtomicU64,
    pub pings: AtomicU64,
    pub fail_connect: AtomicBool,
    /// Connects fail with `too many connections` (the server at capacity).
    pub at_capacity: AtomicBool,
    /// Connects fail with `password authentication failed`.
    pub wrong_password: AtomicBool,
    /// When non-zero, connects numbered above it fail (`connection refused`).
    pub fail_after: AtomicU64,
    /// How long a connect takes, in milliseconds (so that parallel attempts overlap).
    pub connect_ms: AtomicU64,
    /// Connects panic (a driver bug).
    pub panic_connect: AtomicBool,
    pub fail_ping: AtomicBool,
    /// Connections numbered up to this one fail their pings (a server restart killed them).
    pub broken_upto: AtomicU64,
    /// Connections numbered up to this one never answer a ping (a network black hole).
    pub hung_upto: AtomicU64,
    /// The driver reports every connection broken (bb8's `has_broken`).
    pub reports_broken: AtomicBool,
}

#[derive(Debug)]
pub struct MemError(pub &'static str);

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for MemError {}

#[derive(Debug, Clone, Default)]
pub struct MemManager(pub Arc<MemState>);

/// How the pool should read a [`MemError`] from a connect: as PostgreSQL's backend reads
/// SQLSTATE 28P01 and 53300.
pub fn mem_connect_failure(e: &MemError) -> pool_core::ConnectFailure {
    match e.0 {
        "password authentication failed" => pool_core::ConnectFailure::Fatal,
        "too many connections" => pool_core::ConnectFailure::Capacity,
        _ => pool_core::ConnectFailure::Transient,
    }
}

impl MemManager {
    pub fn new() -> (MemManager, Arc<MemState>) {
        let state = Arc::new(MemState::default());
        (MemManager(state.clone()), state)
    }
}

impl pool_core::ManageConnection for MemManager {
    type Connection = MemConn;
    type Error = MemError;

    async fn connect(&self) -> Result<MemConn, MemError> {
        let ms = self.0.connect_ms.load(SeqCst);
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        assert!(!self.0.panic_connect.load(SeqCst), "the driver panicked");
        if self.0.fail_connect.load(SeqCst) {
            return Err(MemError("connection refused"));
        }
        if self.0.at_capacity.load(SeqCst) {
            return Err(MemError("too many connections"));
        }
        if self.0.wrong_password.load(SeqCst) {
            return Err(MemError("password authentication failed"));
        }
        let limit = self.0.fail_after.load(SeqCst);
        if limit > 0 && self.0.connects.load(SeqCst) >= limit {
            return Err(MemError("connection refused"));
        }
        let id = self.0.connects.fetch_add(1, SeqCst) + 1;
        Ok(MemConn { id })
    }

    async fn is_valid(&self, conn: &mut MemConn) -> Result<(), MemError> {
        self.0.pings.fetch_add(1, SeqCst);
        if conn.id <= self.0.hung_upto.load(SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.0.fail_ping.load(SeqCst) || conn.id <= self.0.broken_upto.load(SeqCst) {
            return Err(MemError("ping failed"));
        }
        Ok(())
    }

    fn has_broken(&self, _conn: &mut MemConn) -> bool {
        self.0.reports_broken.load(SeqCst)
    }
}

/// Captures log lines written while it is the default subscriber (current-thread runtimes
/// keep spawned tasks on the same thread, so their logs are caught too).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
