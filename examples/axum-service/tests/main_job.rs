//! The README's first command, as a new user runs it: no setup, embedded SQLite. Starts the
//! real binary on a free port, reads the banner, and uses the documented routes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::request;

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_service_starts_with_no_setup_and_serves_the_documented_routes() {
    // A private temporary directory: the default SQLite file lands there, fresh.
    let tmp = std::env::temp_dir().join(format!("axum-service-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum-service"))
        .env("TMPDIR", &tmp)
        .env("PORT", "0")
        .env_remove("DATABASE_URL")
        .env_remove("MONITORING_TOKEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let service = Service(child);
    // Read the banner: it names the address and the generated monitoring token. Bounded: a
    // service that hangs before printing it fails the test (and is killed with `service`).
    let reading = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C") {
                break;
            }
        }
        text
    });
    let banner = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the service printed its banner within 60 s")
        .unwrap();
    assert!(banner.contains("SQLite (embedded)"), "{banner}");
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner}"))
        .to_owned();
    let token = banner
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap()
        .to_owned();

    assert_eq!(
        request(&addr, "GET", "/health", &[], "").await,
        (200, "ok\n".into())
    );
    let (status, body) = request(
        &addr,
        "POST",
        "/notes",
        &["Content-Type: application/json"],
        r#"{"title":"first","body":"hello"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, r#"{"id":1,"title":"first","body":"hello"}"#);
    let (status, body) = request(&addr, "GET", "/notes/1", &[], "").await;
    assert_eq!((status, body.contains("hello")), (200, true), "{body}");
    let (status, body) = request(&addr, "GET", "/notes", &[], "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"[{"id":1,"title":"first","body":"hello"}]"#)
    );
    assert_eq!(request(&addr, "GET", "/notes/99", &[], "").await.0, 404);
    assert_eq!(request(&addr, "GET", "/slow?ms=10", &[], "").await.0, 200);

    assert_eq!(
        request(&addr, "GET", "/monitoring/connection-pool", &[], "")
            .await
            .0,
        401
    );
    let auth = format!("Authorization: Bearer {token}");
    let (status, body) = request(&addr, "GET", "/monitoring/connection-pool", &[&auth], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""backend":"sqlite""#), "{body}");
    drop(service);
    std::fs::remove_dir_all(tmp).ok();
}

#[test]
fn load_mode_drives_the_api_shows_progress_and_stops_by_itself() {
    let tmp = std::env::temp_dir().join(format!("axum-service-load-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_axum-service"))
        .args(["--load", "2", "--workers", "4"])
        .env("TMPDIR", &tmp)
        .env("PORT", "0")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let progress: Vec<_> = stdout.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(!progress.is_empty(), "{stdout}");
    for line in &progress {
        for field in ["requests", "utilization", "wait p99", "breaker closed"] {
            assert!(line.contains(field), "{line}");
        }
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("load finished:"))
        .unwrap();
    let sent: u64 = summary.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(sent > 0, "{summary}");
    assert!(
        summary.contains(&format!("{sent} requests, {sent} ok")),
        "every request answered: {summary}"
    );
    std::fs::remove_dir_all(tmp).ok();
}
