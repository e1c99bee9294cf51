//! The demo leaks no part of a DSN password, in every DSN form the driver reads:
//!
//! - against a port where nothing listens, the demo refuses to start and says why;
//! - against a live server (`POOL_TEST_DATABASE_URL`) whose role has a password full of
//!   specials, it serves: the banner, every log line, the API's responses and the monitoring
//!   JSON are read;
//! - a raw `@` in a URL password is refused at start-up with advice, not turned into a host.
//!
//! Neither the password nor any 4-character piece of it may appear, nor the operator's
//! monitoring token in the banner.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::postgres::tokio_postgres::{self, NoTls};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// No `@`: a raw `@` is refused in the URL form (tested on its own below).
const PASSWORD: &str = "Zq/9?x#K:w%2 v'e\"b\\Tj\t&=";
const OPERATOR_TOKEN: &str = "operator-chosen-token-4c1e";

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

fn escaped(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_whitespace() || c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The same DSN in every form the driver reads.
fn dsns(user: &str, port: u16, db: &str) -> Vec<(&'static str, String)> {
    let p = PASSWORD;
    let enc = percent_encode(p);
    vec![
        (
            "url, raw",
            format!("postgres://{user}:{p}@127.0.0.1:{port}/{db}"),
        ),
        (
            "url, percent-encoded",
            format!("postgresql://{user}:{enc}@127.0.0.1:{port}/{db}?sslmode=disable"),
        ),
        (
            "url, password parameter",
            format!("postgres://127.0.0.1:{port}/{db}?user={user}&password={enc}"),
        ),
        (
            "url, two hosts",
            format!("postgres://{user}:{enc}@127.0.0.1:{port},localhost:{port}/{db}"),
        ),
        (
            "key=value, quoted",
            format!(
                "host=127.0.0.1 port={port} dbname={db} user={user} password='{}'",
                quoted(p)
            ),
        ),
        (
            "key=value, escaped",
            format!(
                "host=127.0.0.1 port={port} dbname={db} user={user} password={}",
                escaped(p)
            ),
        ),
        (
            "key = value, tabs",
            format!(
                "host = 127.0.0.1\tport = {port}\tdbname = {db}  user = {user}\tpassword = '{}'",
                quoted(p)
            ),
        ),
    ]
}

fn assert_no_piece(what: &str, text: &str) {
    assert!(!text.contains(PASSWORD), "{what}: the password in\n{text}");
    let chars: Vec<char> = PASSWORD.chars().collect();
    for piece in chars.windows(4) {
        let piece: String = piece.iter().collect();
        assert!(
            !text.contains(&piece),
            "{what}: `{piece}` of the password in\n{text}"
        );
    }
}

/// The demo with `dsn`, its output collected as it runs.
struct Demo {
    child: Child,
    output: Arc<Mutex<String>>,
    banner: tokio::sync::oneshot::Receiver<String>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Demo {
    /// The demo on `dsn`, or on its embedded SQLite default.
    fn start(dsn: &str) -> Demo {
        let mut command = Command::new(env!("CARGO_BIN_EXE_axum-service"));
        if dsn.is_empty() {
            command.env_remove("DATABASE_URL");
        } else {
            command.env("DATABASE_URL", dsn);
        }
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Demo {
        let tmp = std::env::temp_dir().join(format!("axum-service-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = command
            .env("PORT", "0")
            .env("TMPDIR", tmp)
            .env("MONITORING_TOKEN", OPERATOR_TOKEN)
            .env("DB_POOL_SIZE", "2")
            .env("DB_POOL_TIMEOUT", "2")
            .env("DB_POOL_CONNECT_TIMEOUT", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (banner_tx, banner) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        let stdout_reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut banner = String::new();
            let mut banner_tx = Some(banner_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                out.lock().unwrap().push_str(&format!("{line}\n"));
                banner.push_str(&format!("{line}\n"));
                if line.contains("Ctrl-C") {
                    if let Some(tx) = banner_tx.take() {
                        let _ = tx.send(std::mem::take(&mut banner));
                    }
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let out = output.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            out.lock().unwrap().push_str(&text);
        });
        Demo {
            child,
            output,
            banner,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// Waits (bounded) for the demo to exit by itself; its exit status and everything it
    /// printed.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the demo stopped within 60 s")
            .unwrap();
        for reader in self.readers {
            reader.await.unwrap();
        }
        let output = self.output.lock().unwrap().clone();
        (status, output)
    }

    /// Stops the demo and returns everything it printed.
    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        for reader in self.readers {
            reader.await.unwrap();
        }
        let output = self.output.lock().unwrap().clone();
        output
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_closed_port_the_demo_refuses_to_start_and_shows_no_password() {
    let port = closed_port();
    let demos: Vec<_> = dsns("app", port, "orders")
        .into_iter()
        .map(|(form, dsn)| (form, Demo::start(&dsn)))
        .collect();
    for (form, demo) in demos {
        let (status, output) = demo.exit().await;
        assert!(!status.success(), "{form}: {output}");
        assert!(output.contains("error: "), "{form}: {output}");
        // The start-up failure names its cause, not only the breaker.
        assert!(
            output.contains("last connection error (") && output.contains("Connection refused"),
            "{form}: {output}"
        );
        assert!(
            output.contains(&format!("127.0.0.1:{port}")),
            "{form}: the error names where it tried: {output}"
        );
        assert_no_piece(form, &output);
    }
}

/// On the embedded default (no server needed): an operator's token is never printed.
#[tokio::test]
async fn the_banner_never_echoes_the_operators_monitoring_token() {
    let mut demo = Demo::start("");
    let banner = tokio::time::timeout(Duration::from_secs(60), &mut demo.banner)
        .await
        .expect("a banner within 60 s");
    let Ok(banner) = banner else {
        panic!("the demo exited before its banner: {}", demo.stop().await);
    };
    assert!(banner.contains("SQLite"), "{banner}");
    assert!(banner.contains("$MONITORING_TOKEN"), "{banner}");
    let output = demo.stop().await;
    assert!(!output.contains(OPERATOR_TOKEN), "{output}");
    for piece in OPERATOR_TOKEN.as_bytes().windows(6) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            !output.contains(piece),
            "`{piece}` of the token in: {output}"
        );
    }
}

#[tokio::test]
async fn a_raw_at_sign_in_a_url_password_is_refused_with_advice() {
    let demo = Demo::start("postgres://app:Zq@9x#Kw/v@127.0.0.1:1/orders");
    let (status, output) = demo.exit().await;
    assert!(!status.success());
    assert!(
        output.contains("DATABASE_URL: more than one `@`"),
        "{output}"
    );
    assert!(output.contains("%40"), "{output}");
    for piece in ["Zq@9", "9x#K", "Kw/v"] {
        assert!(!output.contains(piece), "{output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_live_server_the_demo_serves_and_shows_no_password() {
    let Ok(admin_url) = std::env::var("POOL_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "POOL_TEST_DATABASE_URL is not set and CI=true"
        );
        eprintln!(
            "SKIPPED against_a_live_server_the_demo_serves_and_shows_no_password: no PostgreSQL"
        );
        return;
    };
    let config: tokio_postgres::Config = admin_url.parse().unwrap();
    let port = config.get_ports()[0];
    let (admin, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE demo_secret LOGIN; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             ALTER ROLE demo_secret PASSWORD '{}'",
            PASSWORD.replace('\'', "''")
        ))
        .await
        .unwrap();
    let exists = admin
        .query_opt(
            "select 1 from pg_database where datname = 'secrets_demo'",
            &[],
        )
        .await
        .unwrap();
    if exists.is_none() {
        admin
            .batch_execute("CREATE DATABASE secrets_demo OWNER demo_secret")
            .await
            .unwrap();
    }

    for (form, dsn) in dsns("demo_secret", port, "secrets_demo") {
        let mut demo = Demo::start(&dsn);
        let banner = tokio::time::timeout(Duration::from_secs(60), &mut demo.banner)
            .await
            .unwrap_or_else(|_| panic!("{form}: no banner within 60 s"));
        let Ok(banner) = banner else {
            let output = demo.stop().await;
            panic!("{form}: the demo exited before its banner: {output}");
        };
        assert!(banner.contains("PostgreSQL"), "{form}: {banner}");
        assert!(!banner.contains(OPERATOR_TOKEN), "{form}: {banner}");
        assert!(banner.contains("$MONITORING_TOKEN"), "{form}: {banner}");
        let addr = banner
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .to_owned();
        let auth = format!("Authorization: Bearer {OPERATOR_TOKEN}");
        let mut responses = String::new();
        let created = common::request_raw(
            &addr,
            "POST",
            "/notes",
            &["Content-Type: application/json"],
            r#"{"title":"t","body":"b"}"#,
        )
        .await;
        assert!(created.starts_with("HTTP/1.1 201"), "{form}: {created}");
        responses.push_str(&created);
        let report =
            common::request_raw(&addr, "GET", "/monitoring/connection-pool", &[&auth], "").await;
        assert!(report.starts_with("HTTP/1.1 200"), "{form}: {report}");
        assert!(
            report.contains(&format!("127.0.0.1:{port}")),
            "{form}: the report names the pool by host:port/db: {report}"
        );
        responses.push_str(&report);
        for path in [
            "/notes",
            "/notes/1",
            "/monitoring/circuit-breakers",
            "/nope",
        ] {
            responses.push_str(&common::request_raw(&addr, "GET", path, &[&auth], "").await);
        }
        let output = demo.stop().await;
        assert_no_piece(form, &output);
        assert_no_piece(form, &responses);
    }
}
