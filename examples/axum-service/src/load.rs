//! `--load SECONDS`: drives the service's own API from inside the process so the dashboard
//! (or the monitoring endpoint) has something to show, with a progress line every second:
//! requests, status counts, utilization, the pool's wait-time p99 and the breaker state. It
//! stops by itself when the time is up, and then the service shuts down cleanly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{CheckoutOutcome, ManageConnection, Pool, PoolEvent, PoolObserver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Keeps the checkout wait times of the current second, for the progress line's p99.
#[derive(Debug, Default)]
pub(crate) struct WaitTimes(Mutex<Vec<Duration>>);

impl PoolObserver for WaitTimes {
    fn on_event(&self, _pool: &str, event: &PoolEvent<'_>) {
        if let PoolEvent::Checkout {
            waited,
            outcome: CheckoutOutcome::Ok,
        } = event
        {
            if let Ok(mut w) = self.0.lock() {
                w.push(*waited);
            }
        }
    }
}

impl WaitTimes {
    fn take_p99(&self) -> Option<Duration> {
        let mut waits = std::mem::take(&mut *self.0.lock().ok()?);
        if waits.is_empty() {
            return None;
        }
        waits.sort_unstable();
        Some(waits[(waits.len() * 99).div_ceil(100).saturating_sub(1)])
    }
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    std::str::from_utf8(raw.get(9..12)?).ok()?.parse().ok()
}

/// Runs the load for `duration` with `workers` concurrent clients, printing progress.
pub(crate) async fn run<M: ManageConnection>(
    addr: SocketAddr,
    pool: Pool<M>,
    waits: Arc<WaitTimes>,
    duration: Duration,
    workers: usize,
) {
    let counts = Arc::new(Counts::default());
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = worker as u64;
            while Instant::now() < end {
                i += 1;
                let (method, path, body) = match i % 20 {
                    0..=11 => ("GET", "/notes".to_owned(), ""),
                    12..=15 => (
                        "POST",
                        "/notes".to_owned(),
                        r#"{"title":"load","body":"generated"}"#,
                    ),
                    16..=18 => ("GET", "/slow?ms=200".to_owned(), ""),
                    _ => ("GET", format!("/notes/{}", i % 50 + 1), ""),
                };
                counts.sent.fetch_add(1, Relaxed);
                match request(addr, method, &path, body).await {
                    Some(200..=299) | Some(404) => counts.ok.fetch_add(1, Relaxed),
                    Some(503) => counts.unavailable.fetch_add(1, Relaxed),
                    _ => counts.other.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last = 0;
    while Instant::now() < end {
        ticks.tick().await;
        let s = pool.stats();
        let sent = counts.sent.load(Relaxed);
        let p99 = waits.take_p99().map_or("-".to_owned(), |d| {
            format!("{:.1}ms", d.as_secs_f64() * 1e3)
        });
        println!(
            "t={:>3}s  requests {:>7} ({:>5}/s)  ok {:>7}  503 {:>5}  other {:>3}  utilization {:>3.0}% ({}/{} in use, {} waiting)  wait p99 {:>8}  breaker {}",
            start.elapsed().as_secs(),
            sent,
            sent - last,
            counts.ok.load(Relaxed),
            counts.unavailable.load(Relaxed),
            counts.other.load(Relaxed),
            s.utilization * 100.0,
            s.in_use,
            s.max_size,
            s.pending,
            p99,
            s.breaker.state,
        );
        last = sent;
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "load finished: {} requests, {} ok, {} answered 503",
        counts.sent.load(Relaxed),
        counts.ok.load(Relaxed),
        counts.unavailable.load(Relaxed)
    );
}
