//! pool-core against a real PostgreSQL server (started by `scripts/test.sh`).
//!
//! Without `POOL_TEST_DATABASE_URL` these tests print SKIPPED and pass, except under
//! `CI=true`, where a missing server fails them.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pg_url, LogCapture, PrivateServer, Recorded, Recorder};
use pool_core::postgres::tokio_postgres::{self, NoTls};
use pool_core::postgres::SessionState;
use pool_core::{
    BreakerConfig, BreakerState, CheckoutError, PoolBuilder, PoolConfig, PostgresPool,
};

fn builder_with(
    url: &str,
    f: impl FnOnce(PoolConfig) -> PoolConfig,
) -> PoolBuilder<pool_core::postgres::PostgresManager<NoTls>> {
    let config = f(PoolConfig {
        database_url: Some(pool_core::DatabaseUrl::parse(url).unwrap()),
        health_interval: Duration::from_secs(3600),
        ..PoolConfig::development()
    });
    PoolBuilder::postgres().config(config)
}

fn pool_with(url: &str, f: impl FnOnce(PoolConfig) -> PoolConfig) -> PostgresPool {
    builder_with(url, f).build_postgres().unwrap()
}

async fn backend_pid(conn: &tokio_postgres::Client) -> i32 {
    conn.query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_two_plus_overflow_three_grows_to_five_and_shrinks_to_two_once_idle() {
    let Some(url) =
        pg_url("base_two_plus_overflow_three_grows_to_five_and_shrinks_to_two_once_idle")
    else {
        return;
    };
    let recorder = Recorder::new();
    let pool = PoolBuilder::postgres()
        .database_url(&url)
        .base_size(2)
        .max_overflow(3)
        .idle_timeout(Duration::from_secs(1))
        .health_interval(Duration::from_secs(3600))
        .observer(recorder.clone())
        .build_postgres()
        .unwrap();
    pool.warm_up().await.unwrap();
    assert_eq!(pool.stats().idle, 2, "the base is opened up front");

    let holders: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                let pid = backend_pid(&conn).await;
                (conn, pid)
            })
        })
        .collect();
    let mut held = Vec::new();
    for h in holders {
        held.push(h.await.unwrap());
    }
    let mut pids: Vec<_> = held.iter().map(|(_, pid)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 5, "five distinct server backends");
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle), (5, 5, 0));
    assert_eq!(s.utilization, 1.0);
    drop(held);
    let s = at_rest(&pool, 5).await;
    assert_eq!(
        (s.size, s.in_use, s.idle),
        (5, 0, 5),
        "overflow lingers on return"
    );

    // Readiness polling with a bound: the idle timeout (1 s) plus the reaper's period.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().size > 2 {
        assert!(Instant::now() < deadline, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle), (2, 0, 2));
    assert_eq!(s.connections_closed.idle_timeout, 3);
    assert_eq!(s.connections_closed.total(), 3);
    assert_eq!(s.connections_created, 5);
    assert_eq!(s.checkouts_direct + s.checkouts_waited, 5);
    assert_eq!(s.checkout_timeouts, 0);
    assert_eq!(s.pending, 0);
    assert_eq!(
        recorder.count(|e| matches!(e, Recorded::Created { ok: true, .. })),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_times_out_after_the_configured_time_and_names_the_pool_state() {
    let Some(url) =
        pg_url("a_checkout_times_out_after_the_configured_time_and_names_the_pool_state")
    else {
        return;
    };
    let pool = pool_with(&url, |c| PoolConfig {
        name: Some("timeouts".into()),
        base_size: 1,
        max_overflow: 1,
        checkout_timeout: Duration::from_millis(400),
        ..c
    });
    let _a = pool.get().await.unwrap();
    let _b = pool.get().await.unwrap();
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    let elapsed = start.elapsed();
    let CheckoutError::Timeout {
        waited, snapshot, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        *waited >= Duration::from_millis(400) && elapsed >= *waited,
        "{waited:?}"
    );
    assert_eq!(
        (
            snapshot.total,
            snapshot.in_use,
            snapshot.idle,
            snapshot.waiting
        ),
        (2, 2, 0, 1)
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "connection is not available in pool `timeouts`, request timed out after 4"
        ),
        "{text}"
    );
    assert!(
        text.contains("(total=2, active=2, idle=0, waiting=1, max=2)"),
        "{text}"
    );
    let s = pool.stats();
    assert_eq!(s.checkout_timeouts, 1);
    assert_eq!(s.breaker.state, BreakerState::Closed);
    assert!(s.exhaustion_episodes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_opens_the_breaker_after_the_threshold_and_a_restart_closes_it() {
    let Some(_) =
        pg_url("a_stopped_server_opens_the_breaker_after_the_threshold_and_a_restart_closes_it")
    else {
        return;
    };
    // A private server: this test crashes it, and the others must not notice.
    let server = PrivateServer::start(55479);
    let recorder = Recorder::new();
    let pool = builder_with(&server.url, |c| PoolConfig {
        base_size: 0,
        max_overflow: 4,
        checkout_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        breaker: BreakerConfig {
            failure_threshold: 3,
            recovery_timeout: Duration::from_secs(1),
            success_threshold: 2,
            ..BreakerConfig::default()
        },
        ..c
    })
    .observer(recorder.clone())
    .build_postgres()
    .unwrap();
    drop(
        pool.get()
            .await
            .unwrap_or_else(|e| panic!("{e}: {:#?}", recorder.events())),
    );
    assert_eq!(pool.stats().connection_failures, 0);

    server.ctl("crash"); // pg_ctl stop -m immediate
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    let waited = start.elapsed();
    let CheckoutError::CircuitOpen { retry_after, .. } = err else {
        panic!("expected CircuitOpen, got {err}")
    };
    assert!(waited < Duration::from_secs(20), "failed fast: {waited:?}");
    assert!(retry_after <= Duration::from_secs(1));
    let s = pool.stats();
    // failure_threshold failed connects, one after another, and perhaps the first probe.
    assert!(
        (3..=4).contains(&s.connection_failures),
        "{} failed connects",
        s.connection_failures
    );
    assert_eq!(s.breaker.state, BreakerState::Open);
    let last = s.last_error.unwrap();
    assert!(last.contains("could not connect to 127.0.0.1:"), "{last}");

    let start = Instant::now();
    let CheckoutError::CircuitOpen { .. } = pool.get().await.unwrap_err() else {
        panic!("expected CircuitOpen while open")
    };
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "rejected without waiting"
    );

    server.ctl("restart"); // waits until the server accepts connections
    let back = Instant::now();
    // The pool probes in the background; no checkout is needed to close the breaker.
    let deadline = back + Duration::from_secs(5);
    while pool.breaker_state() != BreakerState::Closed {
        assert!(
            Instant::now() < deadline,
            "still {:?}: {:#?}",
            pool.breaker_state(),
            recorder.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed_after = back.elapsed();
    assert!(
        closed_after <= Duration::from_secs(2),
        "closed {closed_after:?} after the restart"
    );
    for _ in 0..2 {
        let conn = pool.get().await.unwrap();
        conn.simple_query("select 1").await.unwrap();
    }
    use BreakerState::*;
    assert_eq!(
        recorder.transitions(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_replaced_by_pre_ping_without_an_error() {
    let Some(url) = pg_url("terminated_backends_are_replaced_by_pre_ping_without_an_error") else {
        return;
    };
    let pool = pool_with(&url, |c| PoolConfig {
        name: Some("terminated".into()),
        base_size: 3,
        max_overflow: 0,
        validation_bypass: Duration::ZERO,
        ..c
    });
    let held = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    let mut pids = Vec::new();
    for conn in &held {
        pids.push(backend_pid(conn).await);
    }
    drop(held);

    let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed: i64 = admin
        .query_one(
            "select count(*) from (select pg_terminate_backend(p) from unnest($1::int4[]) p) t",
            &[&pids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 3);

    let held = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    for conn in &held {
        let pid = backend_pid(conn).await;
        assert!(
            !pids.contains(&pid),
            "a fresh backend, not a terminated one"
        );
    }
    drop(held);
    // Returned connections whose driver still had a statement close to write go back once
    // it has run (a bounded wait).
    let s = at_rest(&pool, 3).await;
    assert_eq!(
        s.connections_closed.invalid + s.connections_closed.broken,
        3
    );
    assert_eq!(s.checkout_timeouts, 0);
    assert_eq!(s.breaker.state, BreakerState::Closed);
    assert_eq!((s.size, s.idle, s.in_use), (3, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_recycle_closes_idle_connections_at_once_and_checked_out_ones_on_return() {
    let Some(url) =
        pg_url("force_recycle_closes_idle_connections_at_once_and_checked_out_ones_on_return")
    else {
        return;
    };
    let pool = pool_with(&url, |c| PoolConfig {
        base_size: 2,
        max_overflow: 0,
        ..c
    });
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let old = [backend_pid(&a).await, backend_pid(&b).await];
    drop(a);
    at_rest(&pool, 1).await;
    let report = pool.force_recycle();
    assert_eq!((report.idle_closed, report.checked_out), (1, 1));
    let s = pool.stats();
    assert_eq!(s.connections_closed.forced, 1);
    assert_eq!((s.size, s.in_use), (1, 1));
    drop(b);
    assert_eq!(pool.stats().connections_closed.forced, 2);
    let fresh = pool.get().await.unwrap();
    assert!(!old.contains(&backend_pid(&fresh).await));
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_held_past_the_leak_threshold_yields_one_warning_naming_its_checkout() {
    let Some(url) =
        pg_url("a_connection_held_past_the_leak_threshold_yields_one_warning_naming_its_checkout")
    else {
        return;
    };
    let logs = LogCapture::default();
    let _guard = logs.install();
    let recorder = Recorder::new();
    let pool = PoolBuilder::postgres()
        .database_url(&url)
        .base_size(1)
        .max_overflow(2)
        .leak_threshold(Duration::from_millis(300))
        .observer(recorder.clone())
        .build_postgres()
        .unwrap();
    let line = line!() + 1;
    let leaked = pool.get().await.unwrap();
    recorder
        .wait_for(Duration::from_secs(10), |e| {
            matches!(e, Recorded::Leak { .. })
        })
        .await;
    // A second leak, found by a later scan, proves the scanner went on running past the
    // first report without repeating it.
    let second = pool.get().await.unwrap();
    recorder
        .wait_for(
            Duration::from_secs(10),
            |e| matches!(e, Recorded::Leak { location } if location.line() != line),
        )
        .await;
    drop((leaked, second));
    let leaks: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::Leak { location } => Some(location),
            _ => None,
        })
        .collect();
    assert_eq!(leaks.len(), 2);
    assert_eq!(leaks.iter().filter(|l| l.line() == line).count(), 1);
    assert!(leaks[0].file().ends_with("postgres.rs"), "{}", leaks[0]);
    let text = logs.text();
    let first: Vec<_> = text
        .lines()
        .filter(|l| l.contains("possible leak") && l.contains(&format!("tests/postgres.rs:{line}")))
        .collect();
    assert_eq!(first.len(), 1, "{text}");
    assert_eq!(text.matches("leaked was returned").count(), 2, "{text}");
    assert_eq!(pool.stats().leaks_suspected, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_thousand_checkouts_mid_wait_leaves_pending_at_zero() {
    let Some(url) = pg_url("dropping_a_thousand_checkouts_mid_wait_leaves_pending_at_zero") else {
        return;
    };
    let pool = pool_with(&url, |c| PoolConfig {
        base_size: 1,
        max_overflow: 1,
        checkout_timeout: Duration::from_secs(30),
        ..c
    });
    let held = [pool.get().await.unwrap(), pool.get().await.unwrap()];
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    // Readiness polling with a bound: every task is queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().pending < 1000 {
        assert!(
            Instant::now() < deadline,
            "pending = {}",
            pool.stats().pending
        );
        tokio::task::yield_now().await;
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    let s = pool.stats();
    assert_eq!(s.pending, 0);
    assert_eq!((s.size, s.in_use, s.idle), (2, 2, 0));
    drop(held);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle), (2, 0, 2));
    assert_eq!(s.checkout_timeouts, 0);
    let conn = pool.get().await.unwrap();
    conn.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn the_password_appears_in_no_error_stat_debug_output_or_log() {
    let Some(url) = pg_url("the_password_appears_in_no_error_stat_debug_output_or_log") else {
        return;
    };
    let logs = LogCapture::default();
    let _guard = logs.install();
    let secret = "wrong-secret-4711";
    let bad_url = url.replacen("pool-test-secret", secret, 1);
    assert!(bad_url.contains(secret));
    let pool = pool_with(&bad_url, |c| PoolConfig {
        base_size: 0,
        max_overflow: 1,
        checkout_timeout: Duration::from_millis(1500),
        ..c
    });
    let err = pool.get().await.unwrap_err();
    let stats = pool.stats();
    let outputs = [
        err.to_string(),
        format!("{err:?}"),
        format!("{stats:?}"),
        format!("{pool:?}"),
        format!("{:?}", pool.config()),
        serde_json::to_string(&stats).unwrap(),
        logs.text(),
    ];
    for text in &outputs {
        assert!(!text.contains(secret), "password leaked: {text}");
    }
    let last = stats.last_error.unwrap();
    assert!(last.contains("password authentication failed"), "{last}");
    assert!(logs.text().contains("could not open a database connection"));
    assert_eq!(
        stats.name,
        "127.0.0.1:55432/postgres".replace("55432", &port_of(&url))
    );
}

fn port_of(url: &str) -> String {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_query_errors_without_tripping_the_breaker() {
    let Some(url) = pg_url("run_reports_query_errors_without_tripping_the_breaker") else {
        return;
    };
    let pool = Arc::new(pool_with(&url, |c| PoolConfig {
        base_size: 1,
        max_overflow: 1,
        ..c
    }));
    for _ in 0..10 {
        let err = pool
            .run(|conn| {
                Box::pin(async move { conn.simple_query("select * from no_such_table").await })
            })
            .await
            .unwrap_err();
        let pool_core::RunError::Operation(e) = err else {
            panic!("{err}")
        };
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
        );
    }
    let s = pool.stats();
    assert_eq!(s.breaker.consecutive_failures, 0);
    assert_eq!(
        s.connections_closed.broken, 0,
        "user errors do not condemn the connection"
    );
    let n: i32 = pool
        .run(|conn| {
            Box::pin(async move { Ok(conn.query_one("select 7::int4", &[]).await?.get(0)) })
        })
        .await
        .unwrap();
    assert_eq!(n, 7);
}

/// An observer connection (not through the pool), an empty table `table (id int)`, and a
/// warmed-up pool of one connection, so that every borrower gets the same session.
async fn one_session(url: &str, table: &str) -> (tokio_postgres::Client, PostgresPool) {
    let (observer, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    observer
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (id int)"
        ))
        .await
        .unwrap();
    let pool = pool_with(url, |c| PoolConfig {
        base_size: 1,
        max_overflow: 0,
        ..c
    });
    pool.warm_up().await.unwrap();
    (observer, pool)
}

/// `true` when the session runs outside a transaction block: a `SAVEPOINT` is refused there
/// with SQLSTATE 25P01 (in an open block it succeeds; in a failed one it fails with 25P02).
async fn outside_a_transaction(conn: &tokio_postgres::Client) -> bool {
    match conn.batch_execute("savepoint outside_probe").await {
        Ok(()) => false,
        Err(e) => e.code() == Some(&tokio_postgres::error::SqlState::NO_ACTIVE_SQL_TRANSACTION),
    }
}

/// Sessions of `pids` that the server shows as `idle in transaction` (aborted or not).
async fn idle_in_transaction(observer: &tokio_postgres::Client, pids: &[i32]) -> i64 {
    observer
        .query_one(
            "select count(*) from pg_stat_activity \
             where pid = any($1) and state like 'idle in transaction%'",
            &[&pids],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_returned_inside_a_transaction_is_rolled_back_before_the_next_borrower() {
    let Some(url) = pg_url(
        "a_connection_returned_inside_a_transaction_is_rolled_back_before_the_next_borrower",
    ) else {
        return;
    };
    let (observer, pool) = one_session(&url, "reset_on_return").await;

    // A: BEGIN and an INSERT, returned without COMMIT.
    let a = pool.get().await.unwrap();
    let pid = backend_pid(&a).await;
    a.batch_execute("begin; insert into reset_on_return values (1)")
        .await
        .unwrap();
    drop(a);
    let b = pool.get().await.unwrap();
    assert_eq!(backend_pid(&b).await, pid, "the same session, reused");
    assert!(outside_a_transaction(&b).await, "no transaction open");
    let seen: i64 = b
        .query_one("select count(*) from reset_on_return", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "A's row was rolled back, not left for B to commit");
    assert_eq!(idle_in_transaction(&observer, &[pid]).await, 0);

    // B: a transaction that failed (status `E`), returned as it is.
    b.batch_execute("begin; insert into reset_on_return values (2)")
        .await
        .unwrap();
    assert!(b.batch_execute("select 1/0").await.is_err());
    drop(b);
    let c = pool.get().await.unwrap();
    assert_eq!(backend_pid(&c).await, pid);
    assert!(
        outside_a_transaction(&c).await,
        "no aborted transaction left"
    );

    // C: the driver's own `Transaction`, dropped without commit: it queues its ROLLBACK,
    // which the reset waits out; nothing more to undo.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    tx.execute("insert into reset_on_return values (3)", &[])
        .await
        .unwrap();
    drop(tx);
    drop(c);
    let d = pool.get().await.unwrap();
    assert_eq!(backend_pid(&d).await, pid);
    assert!(outside_a_transaction(&d).await);
    drop(d);
    // A borrower that does nothing: returned clean, so the pool is at rest after it (D's
    // last answer, an error, may still have been in flight when D was returned).
    drop(pool.get().await.unwrap());

    let rows: i64 = observer
        .query_one("select count(*) from reset_on_return", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "no borrower's uncommitted row exists");
    assert_eq!(idle_in_transaction(&observer, &[pid]).await, 0);
    let s = pool.stats();
    assert_eq!(s.sessions_reset, 2, "A and B were rolled back by the pool");
    assert_eq!(s.connections_created, 1, "rolled back, not replaced: {s:?}");
    assert_eq!((s.size, s.idle), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_returned_mid_query_is_closed_once_the_reset_times_out() {
    let Some(url) = pg_url("a_connection_returned_mid_query_is_closed_once_the_reset_times_out")
    else {
        return;
    };
    let (observer, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let pool = pool_with(&url, |c| PoolConfig {
        base_size: 1,
        max_overflow: 0,
        validation_timeout: Duration::from_millis(300),
        ..c
    });
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    // The borrower gives up on a long query inside a transaction and returns the
    // connection with the query still running.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        conn.batch_execute("begin; select pg_sleep(30)"),
    )
    .await;
    assert!(gave_up.is_err(), "the query was still running");
    drop(conn);

    let next = pool.get().await.unwrap();
    let fresh = backend_pid(&next).await;
    assert_ne!(fresh, pid, "the busy session was not handed out");
    assert!(outside_a_transaction(&next).await);
    let s = pool.stats();
    assert_eq!(
        s.connections_closed.invalid, 1,
        "closed by the timed-out reset"
    );
    assert_eq!(s.sessions_reset, 0);
    drop(next);

    // The close came with a cancel request: the old backend does not sleep out its 30 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: i64 = observer
            .query_one(
                "select count(*) from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} still running its abandoned query"
        );
        tokio::task::yield_now().await;
    }
}

/// The last statement the server saw on `pid`.
async fn last_query(observer: &tokio_postgres::Client, pid: i32) -> String {
    observer
        .query_one("select query from pg_stat_activity where pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_return_costs_no_round_trip_and_a_copy_leaves_the_session_clean() {
    let Some(url) =
        pg_url("a_clean_return_costs_no_round_trip_and_a_copy_leaves_the_session_clean")
    else {
        return;
    };
    let (observer, pool) = one_session(&url, "reset_copy").await;
    let pid = backend_pid(&pool.get().await.unwrap()).await;
    let mut previous = "select pg_backend_pid()".to_owned();
    let mut asked_the_server = 0;
    for i in 0..50i32 {
        let conn = pool.get().await.unwrap();
        // Neither the return nor this checkout said anything to the server of its own: the
        // last statement it saw is the previous borrower's. (The exception, allowed up to 3
        // times: a session the stream shows busy at a return, asked with an empty query.)
        let seen = last_query(&observer, pid).await;
        if seen.is_empty() {
            asked_the_server += 1;
        } else {
            assert_eq!(seen, previous, "round {i}");
        }
        // Prepared and closed again (`query(&str)`), simple and batch queries.
        let n: i32 = conn
            .query_one("select $1::int", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i);
        conn.simple_query("select 1").await.unwrap();
        previous = format!("select {i} as last_of_round");
        conn.batch_execute(&previous).await.unwrap();
        assert_eq!(conn.session_state(), SessionState::Idle);
        drop(conn);
    }
    assert!(
        asked_the_server <= 3,
        "{asked_the_server} of 50 checkouts asked the server"
    );
    let conn = pool.get().await.unwrap();

    // COPY FROM STDIN: the server answers its two Syncs with one ReadyForQuery.
    {
        use futures_util::SinkExt;
        let sink = conn
            .copy_in::<_, bytes::Bytes>("copy reset_copy from stdin")
            .await
            .unwrap();
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n2\n"))
            .await
            .unwrap();
        assert_eq!(sink.as_mut().finish().await.unwrap(), 2);
    }
    conn.batch_execute("select 'after copy'").await.unwrap();
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_eq!(
        backend_pid(&conn).await,
        pid,
        "the same session, not replaced"
    );
    drop(conn);
    let s = pool.stats();
    assert_eq!(s.sessions_reset, 0);
    assert_eq!(
        s.connections_closed.invalid + s.connections_closed.broken,
        0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_query_queued_by_a_dropped_future_is_rolled_back_before_the_next_borrower() {
    let Some(url) =
        pg_url("a_query_queued_by_a_dropped_future_is_rolled_back_before_the_next_borrower")
    else {
        return;
    };
    let (observer, pool) = one_session(&url, "reset_queued").await;
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    // Polled once (the driver queues the request), then dropped: on this single-threaded
    // runtime the driver's task has not written it when the connection goes back.
    let once = futures_util::FutureExt::now_or_never(
        conn.batch_execute("begin; insert into reset_queued values (1)"),
    );
    assert!(once.is_none(), "still pending after one poll");
    drop(conn);
    let next = pool.get().await.unwrap();
    assert_eq!(backend_pid(&next).await, pid);
    assert!(
        outside_a_transaction(&next).await,
        "no transaction inherited"
    );
    next.batch_execute("insert into reset_queued values (2)")
        .await
        .unwrap();
    drop(next);
    let rows: Vec<i32> = observer
        .query("select id from reset_queued", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        [2],
        "the next borrower's autocommit write is there, the other not"
    );
    assert_eq!(pool.stats().sessions_reset, 1);
}

#[test]
fn a_connection_returned_inside_a_transaction_after_its_runtime_shut_down_is_counted_back() {
    let Some(url) = pg_url(
        "a_connection_returned_inside_a_transaction_after_its_runtime_shut_down_is_counted_back",
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (pool, conn) = runtime.block_on(async {
        let pool = pool_with(&url, |c| PoolConfig {
            base_size: 1,
            max_overflow: 0,
            ..c
        });
        pool.warm_up().await.unwrap();
        let conn = pool.get().await.unwrap();
        conn.batch_execute("begin").await.unwrap();
        (pool, conn)
    });
    // The pool's runtime goes away with the connection still out, inside a transaction:
    // the task that would reset it can no longer run.
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(conn);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use), (0, 0), "{s:?}");
    assert_eq!(s.connections_closed.invalid, 1, "{s:?}");
    // The pool's own count of what is out agrees (a forced recycle reports it).
    let after = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = after.block_on(async { pool.force_recycle() });
    assert_eq!(report.checked_out, 0, "the return was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_first_checkout_at_once_naming_the_cause() {
    let Some(url) = pg_url("a_wrong_password_fails_the_first_checkout_at_once_naming_the_cause")
    else {
        return;
    };
    let port = port_of(&url);
    let pool = pool_with(
        &format!("postgres://postgres:not-the-password@127.0.0.1:{port}/postgres"),
        |c| PoolConfig {
            base_size: 2,
            checkout_timeout: Duration::from_secs(20),
            ..c
        },
    );
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = start.elapsed();
    assert!(err.is_circuit_open(), "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "{took:?}: the first checkout failed without waiting for a timeout"
    );
}

/// The pool's stats once all of its `size` connections are idle again (within 5 s).
async fn at_rest<M: pool_core::ManageConnection>(
    pool: &pool_core::Pool<M>,
    size: u32,
) -> pool_core::PoolStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = pool.stats();
        if s.idle == size || std::time::Instant::now() > deadline {
            return s;
        }
        tokio::task::yield_now().await;
    }
}
