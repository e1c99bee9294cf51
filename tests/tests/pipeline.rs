//! The telemetry pipeline end to end: the demo service on a real PostgreSQL, exporting OTLP
//! to the OpenTelemetry Collector (built from its Go modules by `scripts/test.sh`) running the
//! shipped `otel-collector.yaml`, scraped by Prometheus running the shipped
//! `deploy/prometheus/prometheus.yml` and rules. A scripted workload (known requests, forced
//! checkout timeouts, a breaker opened by stopping PostgreSQL and closed by starting it), then
//! exact assertions against Prometheus and every query of the Grafana dashboard.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Everything the test needs, or `None` (with a line on stderr) outside CI.
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let otelcol = std::env::var_os("POOL_E2E_OTELCOL").map(PathBuf::from);
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let pg = std::env::var_os("POOL_TEST_DATABASE_URL");
    match (otelcol.filter(|p| p.exists()), prometheus, pg) {
        (Some(otelcol), Some(prometheus), Some(_)) => Some((otelcol, prometheus)),
        _ => {
            let why = "needs POOL_E2E_OTELCOL (the built collector), Prometheus and PostgreSQL; run scripts/test.sh";
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("the end-to-end test may not be skipped in CI: it {why}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED telemetry_pipeline: {why}");
            None
        }
    }
}

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Proc(child)
}

fn pg(action: &str, port: u16) -> String {
    let out = Command::new("bash")
        .arg(root().join("scripts/pg.sh"))
        .arg(action)
        .env("PGPORT", port.to_string())
        .env_remove("PG_ROOT")
        .output()
        .unwrap();
    assert!(
        out.status.success() || action == "destroy",
        "pg.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Server(u16);

impl Drop for Server {
    fn drop(&mut self) {
        pg("destroy", self.0);
    }
}

/// One HTTP/1.1 request; the status and the body (de-chunked when the response is chunked).
async fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus API call; the body's `data`.
async fn prom(api: &str) -> Value {
    let (status, body) = http("127.0.0.1:19090", "GET", api, &[], "").await;
    assert_eq!(status, 200, "{api}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{api}: {body}");
    v["data"].clone()
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n.min(tail.len())]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

async fn query(expr: &str) -> Vec<Value> {
    let data = prom(&format!("/api/v1/query?query={}", encode(expr))).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

/// The single value of an instant query (panics if there is not exactly one series).
async fn scalar(expr: &str) -> f64 {
    let result = query(expr).await;
    assert_eq!(result.len(), 1, "{expr}: {result:?}");
    result[0]["value"][1].as_str().unwrap().parse().unwrap()
}

/// Polls `f` until it returns `Some`, at most `limit` (readiness polling with a bound).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_pipeline() {
    let Some((otelcol, prometheus)) = prerequisites() else {
        return;
    };
    let work = std::env::temp_dir().join(format!("pool-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    // The service binary, built the way the README runs it.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "axum-service"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let app_bin = target.join("debug/axum-service");

    let pg_port = 55481;
    pg("destroy", pg_port);
    let url = pg("start", pg_port);
    let _server = Server(pg_port);

    let _collector = spawn(
        "collector",
        Command::new(&otelcol)
            .arg("--config")
            .arg(root().join("otel-collector.yaml"))
            .env("OTELCOL_OTLP_GRPC_ENDPOINT", "127.0.0.1:14317")
            .env("OTELCOL_OTLP_HTTP_ENDPOINT", "127.0.0.1:14318")
            .env("OTELCOL_PROMETHEUS_ENDPOINT", "127.0.0.1:8889")
            .env("OTELCOL_BATCH_TIMEOUT", "500ms")
            // Every span and log record, field by field, in the collector's log.
            .env("OTELCOL_DEBUG_VERBOSITY", "detailed"),
        &work.join("collector.log"),
    );
    let _prometheus = spawn(
        "prometheus",
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                root().join("deploy/prometheus/prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:19090"),
        &work.join("prometheus.log"),
    );

    let mut app = Command::new(&app_bin)
        .env("PORT", "0")
        .env("DATABASE_URL", &url)
        .env("DB_POOL_NAME", "e2e")
        .env("DB_POOL_SIZE", "2")
        .env("DB_MAX_OVERFLOW", "1")
        .env("DB_POOL_TIMEOUT", "500ms")
        .env("DB_POOL_CONNECT_TIMEOUT", "2")
        .env("DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2")
        .env("DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "1")
        .env("DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "1")
        // Overflow connections close after 1 s idle, so the pool is soon at rest at its base.
        .env("DB_POOL_IDLE_TIMEOUT", "1")
        .env("MONITORING_TOKEN", "e2e-token")
        .env("OTEL_SERVICE_NAME", "pool-e2e")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:14317")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(work.join("app.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let stdout = app.stdout.take().unwrap();
    let _app = Proc(app);
    // Read the banner, then keep draining stdout so the service never writes into a closed pipe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let mut text = String::new();
        for line in lines.by_ref() {
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C") {
                break;
            }
        }
        let _ = tx.send(text);
        lines.for_each(drop);
    });
    let banner = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("the service printed its banner")
        .unwrap();
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in: {banner}"))
        .to_owned();
    assert!(
        banner.contains("OTLP to http://127.0.0.1:14317"),
        "{banner}"
    );

    // Known requests.
    for _ in 0..10 {
        assert_eq!(
            http(
                &addr,
                "POST",
                "/notes",
                &[],
                r#"{"title":"e2e","body":"note"}"#
            )
            .await
            .0,
            201
        );
        assert_eq!(http(&addr, "GET", "/notes", &[], "").await.0, 200);
    }
    // A request that continues a sampled trace: its server span (a `tracing` span, exported
    // through tracing-opentelemetry) and the pool's checkout span under it reach the
    // collector.
    let trace_id = "5c1f2e3d4b5a69788796a5b4c3d2e1f0";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("traceparent: 00-{trace_id}-{caller_span}-01");
    assert_eq!(
        http(&addr, "GET", "/notes", &[&traceparent], "").await.0,
        200
    );

    // Exactly two checkout timeouts: three slow requests hold all three connections.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { http(&addr, "GET", "/slow?ms=2500", &[], "").await.0 })
        })
        .collect();
    let auth = "Authorization: Bearer e2e-token";
    eventually(
        Duration::from_secs(10),
        "three connections in use",
        || async {
            let (_, body) = http(&addr, "GET", "/monitoring/connection-pool", &[auth], "").await;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["pools"][0]["stats"]["in_use"] == 3).then_some(())
        },
    )
    .await;
    for _ in 0..2 {
        let (status, body) = http(&addr, "GET", "/notes", &[], "").await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("no database connection became available"),
            "{body}"
        );
    }
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }

    let sel = r#"job="pool-e2e", db_client_connection_pool_name="e2e""#;
    // The breaker: stop PostgreSQL until requests are turned away and Prometheus has seen
    // the breaker open, start it, wait for 200 (the pool's background probes close it).
    pg("crash", pg_port);
    eventually(Duration::from_secs(30), "the breaker to open", || async {
        let (status, body) = http(&addr, "GET", "/notes", &[], "").await;
        (status == 503 && body.contains("the database is unavailable")).then_some(())
    })
    .await;
    let open_now = format!(
        r#"db_client_connection_pool_breaker_status{{{sel}, db_client_connection_pool_breaker_state="open"}}"#
    );
    eventually(
        Duration::from_secs(30),
        "Prometheus to see the breaker open",
        || {
            let expr = open_now.clone();
            async move {
                let result = query(&expr).await;
                (result.len() == 1 && result[0]["value"][1] == "1").then_some(())
            }
        },
    )
    .await;
    pg("restart", pg_port);
    eventually(Duration::from_secs(30), "the breaker to close", || async {
        (http(&addr, "GET", "/notes", &[], "").await.0 == 200).then_some(())
    })
    .await;

    // The pool's own account, at rest: its base re-opened after the outage, the overflow
    // connection reaped (readiness polling with a bound).
    let stats = eventually(
        Duration::from_secs(30),
        "the pool to be at rest",
        || async {
            let (_, body) = http(&addr, "GET", "/monitoring/connection-pool", &[auth], "").await;
            let report: Value = serde_json::from_str(&body).ok()?;
            let stats = report["pools"][0]["stats"].clone();
            (stats["size"] == 2 && stats["idle"] == 2 && stats["in_use"] == 0).then_some(stats)
        },
    )
    .await;
    assert_eq!(stats["checkout_timeouts"], 2);
    assert_eq!(stats["in_use"], 0);
    assert_eq!(stats["breaker"]["state"], "closed");
    let opened = stats["breaker"]["opened"].as_u64().unwrap();
    assert!(opened >= 1);

    // Wait until Prometheus has the final counts, then compare exactly.
    let checkouts =
        stats["checkouts_direct"].as_u64().unwrap() + stats["checkouts_waited"].as_u64().unwrap();
    let rejected = stats["checkouts_rejected"].as_u64().unwrap();
    let expr = format!(
        r#"db_client_connection_wait_time_seconds_count{{{sel}}} and on (job) db_client_connection_pool_breaker_status{{{sel}, db_client_connection_pool_breaker_state="closed"}} == 1"#
    );
    eventually(Duration::from_secs(60), "Prometheus to catch up", || {
        let expr = expr.clone();
        async move {
            let r = query(&expr).await;
            let v: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
            (v as u64 == checkouts).then_some(())
        }
    })
    .await;
    assert_eq!(
        scalar(&format!("db_client_connection_timeouts_total{{{sel}}}")).await,
        2.0
    );
    assert_eq!(
        scalar(&format!(
            "db_client_connection_use_time_seconds_count{{{sel}}}"
        ))
        .await as u64,
        checkouts
    );
    assert_eq!(
        scalar(&format!(
            "db_client_connection_pool_breaker_rejected_total{{{sel}}}"
        ))
        .await as u64,
        rejected
    );
    assert_eq!(
        scalar(&format!(
            "db_client_connection_pool_create_failures_total{{{sel}}}"
        ))
        .await as u64,
        stats["connection_failures"].as_u64().unwrap()
    );
    assert_eq!(
        scalar(&format!(
            r#"db_client_connection_pool_breaker_transitions_total{{{sel}, db_client_connection_pool_breaker_from="closed", db_client_connection_pool_breaker_to="open"}}"#
        ))
        .await,
        1.0
    );
    let closes = scalar(&format!(
        r#"db_client_connection_pool_breaker_transitions_total{{{sel}, db_client_connection_pool_breaker_to="closed"}}"#
    ))
    .await;
    assert_eq!(closes, 1.0);
    // Gauges equal the pool's stats at rest, once an export and a scrape after the pool came
    // to rest have happened (the overflow connection may be reaped after the last checkout
    // the counters above waited for).
    for (state, field) in [("used", "in_use"), ("idle", "idle")] {
        let want = stats[field].as_u64().unwrap();
        let expr =
            format!(r#"db_client_connection_count{{{sel}, db_client_connection_state="{state}"}}"#);
        eventually(
            Duration::from_secs(30),
            "the gauge to show the pool at rest",
            || {
                let expr = expr.clone();
                async move { (scalar(&expr).await as u64 == want).then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(
        scalar(&format!("db_client_connection_max{{{sel}}}")).await,
        3.0
    );
    assert_eq!(
        scalar(&format!("db_client_connection_pending_requests{{{sel}}}")).await,
        0.0
    );
    assert_eq!(
        scalar(&format!(
            r#"db_client_connection_pool_breaker_status{{{sel}, db_client_connection_pool_breaker_state="closed"}}"#
        ))
        .await,
        1.0
    );
    let buckets = query(&format!(
        "db_client_connection_wait_time_seconds_bucket{{{sel}}}"
    ))
    .await;
    assert_eq!(buckets.len(), 16, "15 explicit bounds and +Inf");

    // The breaker timeline: open at some point, closed at the end.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let open = format!(
        r#"db_client_connection_pool_breaker_status{{{sel}, db_client_connection_pool_breaker_state="open"}}"#
    );
    let range = prom(&format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=1",
        encode(&open),
        now - 120,
        now
    ))
    .await;
    let values: Vec<String> = range["result"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no range data: {range}"))
        .iter()
        .map(|v| v[1].as_str().unwrap().to_owned())
        .collect();
    let first_open = values
        .iter()
        .position(|v| v == "1")
        .expect("the breaker was seen open");
    assert!(
        values[first_open..].iter().any(|v| v == "0"),
        "and then closed: {values:?}"
    );
    assert_eq!(values.last().unwrap(), "0");

    // Every query of the dashboard returns data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/db-pool.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "pool-e2e")
                .replace("$pool", "e2e")
                .replace("$__rate_interval", "2m");
            let result = query(&expr).await;
            assert!(
                !result.is_empty(),
                "dashboard panel {:?} returned nothing: {expr}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
    // And the recording rules evaluate on real data.
    eventually(Duration::from_secs(30), "the recording rules", || async {
        let r = query(
            r#"db_pool:connections_max{job="pool-e2e", db_client_connection_pool_name="e2e"}"#,
        )
        .await;
        (r.first()?["value"][1].as_str()? == "3").then_some(())
    })
    .await;

    // The traced request, as the collector's debug exporter printed it: the server span
    // continues the caller's span, and the checkout span is its child.
    let collector_log = work.join("collector.log");
    let (server, checkout) = eventually(
        Duration::from_secs(30),
        "the traced request's spans in the collector",
        || async {
            let spans = debug_spans(&std::fs::read_to_string(&collector_log).ok()?);
            let ours: Vec<_> = spans
                .into_iter()
                .filter(|s| s.get("Trace ID").map(String::as_str) == Some(trace_id))
                .collect();
            let server = ours.iter().find(|s| s["Name"] == "GET /notes")?.clone();
            let checkout = ours
                .iter()
                .find(|s| s["Name"] == "db.client.connection.pool.checkout")?
                .clone();
            Some((server, checkout))
        },
    )
    .await;
    assert_eq!(server["Parent ID"], caller_span, "{server:?}");
    assert_eq!(server["Kind"], "Server", "{server:?}");
    assert_eq!(checkout["Parent ID"], server["ID"], "{checkout:?}");
    // And the pool's warnings reached it as log records (exported in batches: a bounded
    // wait).
    eventually(
        Duration::from_secs(30),
        "a pool warning among the collector's log records",
        || async {
            let text = std::fs::read_to_string(&collector_log).ok()?;
            text.contains("Body: Str(checkout timed out)").then_some(())
        },
    )
    .await;
    std::fs::remove_dir_all(&work).ok();
}

/// The spans in the collector's debug exporter output (`detailed`): one map of the fields
/// printed under each `Span #n` line (`Trace ID`, `Parent ID`, `ID`, `Name`, `Kind`, ...).
fn debug_spans(log: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut spans = Vec::new();
    let mut current: Option<std::collections::HashMap<String, String>> = None;
    for line in log.lines() {
        let line = line.trim();
        if line.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(Default::default());
        } else if line.starts_with("ScopeSpans") || line.starts_with("ResourceSpans") {
            spans.extend(current.take());
        } else if let (Some(span), Some((key, value))) = (current.as_mut(), line.split_once(" : "))
        {
            span.entry(key.trim().to_owned())
                .or_insert_with(|| value.trim().to_owned());
        }
    }
    spans.extend(current);
    spans
}
