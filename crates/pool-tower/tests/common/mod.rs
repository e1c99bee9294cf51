//! Test support: an in-memory connection manager, the PostgreSQL gate, a tiny HTTP client.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connections that are numbers; connects can be made to fail. Used where no database is
/// needed for what the test checks (layer plumbing, telemetry arithmetic).
#[derive(Debug, Clone, Default)]
pub struct Mem(pub Arc<MemState>);

#[derive(Debug, Default)]
pub struct MemState {
    pub connects: AtomicU64,
    pub fail_connect: AtomicBool,
}

#[derive(Debug)]
pub struct MemError;

impl pool_core::ManageConnection for Mem {
    type Connection = u64;
    type Error = MemError;

    async fn connect(&self) -> Result<u64, MemError> {
        if self.0.fail_connect.load(SeqCst) {
            return Err(MemError);
        }
        Ok(self.0.connects.fetch_add(1, SeqCst) + 1)
    }

    async fn is_valid(&self, _: &mut u64) -> Result<(), MemError> {
        Ok(())
    }

    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}

pub fn pg_url(test: &str) -> Option<String> {
    match std::env::var("POOL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: POOL_TEST_DATABASE_URL is not set and CI=true; PostgreSQL tests may not be skipped in CI (run scripts/test.sh)");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no PostgreSQL (set POOL_TEST_DATABASE_URL or run scripts/test.sh)"
            );
            None
        }
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), enough for tests.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n.min(rest.len())]);
        body = rest.get(n + 2..).unwrap_or("");
    }
    out
}
