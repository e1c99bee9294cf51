//! The main job: an axum service on a pool-core pool, instrumented with pool-tower.
//!
//! Runs with no setup on embedded SQLite; set `DATABASE_URL=postgres://…` for PostgreSQL.
//! `cargo run -p axum-service`, then see the banner. `cargo run -p axum-service -- --load 60`
//! also drives the API for 60 s with a live progress line (`--workers N`, default 32), then
//! stops by itself.

mod load;
mod routes;
mod store;
mod telemetry;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{PoolBuilder, PoolConfig};
use pool_tower::{Monitoring, PoolTelemetry};

use store::Store;

#[tokio::main]
async fn main() {
    let telemetry = match telemetry::init("axum-service") {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: telemetry: {e}");
            std::process::exit(1);
        }
    };
    telemetry.install_subscriber();
    if let Err(e) = run(telemetry).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `--load [SECONDS]` and `--workers N`.
struct Args {
    load: Option<Duration>,
    workers: usize,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        load: None,
        workers: 32,
    };
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--load" => {
                let secs = match it.peek().and_then(|v| v.parse::<u64>().ok()) {
                    Some(secs) => {
                        it.next();
                        secs
                    }
                    None => 60,
                };
                args.load = Some(Duration::from_secs(secs.max(1)));
            }
            "--workers" => {
                args.workers = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or("--workers takes a number from 1 to 1024")?;
            }
            "-h" | "--help" => {
                return Err("usage: axum-service [--load [SECONDS]] [--workers N]".into())
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(args)
}

async fn run(telemetry: telemetry::Telemetry) -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let waits = Arc::new(load::WaitTimes::default());
    let load = args.load.map(|d| (d, args.workers));
    let mut config = PoolConfig::from_env()?;
    if config.database_url.is_none() {
        // A file (WAL mode) rather than memory: an in-memory database shared between
        // connections locks whole tables, so concurrent writers would fail instead of wait.
        let file = std::env::temp_dir().join("axum-service.db");
        config.database_url = Some(pool_core::DatabaseUrl::parse(&format!(
            "sqlite:{}",
            file.display()
        ))?);
        // The SQLite profile allows one connection; the demo lets a few requests in at once
        // (WAL serves readers alongside the writer) unless told otherwise.
        if std::env::var_os("DB_MAX_OVERFLOW").is_none() {
            config.max_overflow = 4;
        }
    }
    let instruments = PoolTelemetry::new(&opentelemetry::global::meter("axum-service"));
    let (token, generated) = match std::env::var("MONITORING_TOKEN") {
        Ok(t) if !t.trim().is_empty() => (t, false),
        _ => (random_token()?, true),
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}")).await?;
    let addr = listener.local_addr()?;

    let setup = Setup {
        instruments,
        waits,
        listener,
        addr,
        token,
        generated,
        load,
    };
    match config.backend() {
        Some(pool_core::BackendKind::Postgres) => {
            let pool = setup
                .observe(PoolBuilder::postgres().config(config))
                .build_postgres()?;
            serve::<store::Postgres>(pool, setup, &telemetry).await?;
        }
        _ => {
            let pool = setup
                .observe(PoolBuilder::sqlite().config(config))
                .build_sqlite()?;
            serve::<store::Sqlite>(pool, setup, &telemetry).await?;
        }
    }
    telemetry.shutdown().await;
    tracing::info!("stopped; telemetry flushed, pool closed");
    Ok(())
}

/// What both backends' services are started with.
struct Setup {
    instruments: PoolTelemetry,
    waits: Arc<load::WaitTimes>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: String,
    generated: bool,
    load: Option<(Duration, usize)>,
}

impl Setup {
    fn observe<M: pool_core::ManageConnection>(&self, builder: PoolBuilder<M>) -> PoolBuilder<M> {
        builder
            .observer(self.instruments.observer())
            .observer(self.waits.clone())
    }
}

async fn serve<S: Store>(
    pool: pool_core::Pool<S::Manager>,
    setup: Setup,
    telemetry: &telemetry::Telemetry,
) -> Result<(), Box<dyn std::error::Error>> {
    let Setup {
        instruments,
        waits,
        listener,
        addr,
        token,
        generated,
        load,
    } = setup;
    instruments.observe(&pool)?;
    let mut conn = pool.get().await?;
    S::migrate(&mut conn).await?;
    drop(conn);
    let monitoring = Monitoring::new().token(token.as_str()).pool(&pool)?;
    let app = routes::router::<S>(pool.clone(), monitoring);

    let base = format!("http://{addr}");
    let mut banner = vec![
        String::new(),
        format!("  axum-service on {} (pool `{}`)", S::name(), pool.name()),
        format!(
            "  API         {base}/notes   (POST {{\"title\":…}} to create, GET to list, /notes/ID)"
        ),
        format!(
            "              {base}/slow?ms=500   holds a connection;   {base}/health   no database"
        ),
    ];
    // A token the operator chose is never echoed (the banner ends up in logs): the banner says
    // where it comes from. A generated one exists only here, so it is shown.
    if generated {
        banner.push(format!("  monitoring  curl -H 'Authorization: Bearer {token}' {base}/monitoring/connection-pool"));
        banner.push(
            "              (token generated for this run; set MONITORING_TOKEN to choose one)"
                .into(),
        );
    } else {
        banner.push(format!("  monitoring  curl -H \"Authorization: Bearer $MONITORING_TOKEN\" {base}/monitoring/connection-pool"));
        banner.push(
            "              (the token is MONITORING_TOKEN's value; it is not printed)".into(),
        );
    }
    banner.push(match &telemetry.exporting_to {
        Some(endpoint) => format!("  telemetry   OTLP to {endpoint}"),
        None => {
            "  telemetry   not exported (set OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317)"
                .into()
        }
    });
    banner.push("  Ctrl-C stops it cleanly.\n".into());
    // Written at once; a closed stdout (a supervisor that stopped reading) is not fatal.
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all((banner.join("\n") + "\n").as_bytes());
    let _ = stdout.flush();

    // With `--load`, the service stops when the load run is over (or on a signal).
    let load_run = load.map(|(duration, workers)| {
        tokio::spawn(load::run(addr, pool.clone(), waits, duration, workers))
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let load_over = async {
                match load_run {
                    Some(run) => drop(run.await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown_signal() => {},
                () = load_over => {},
            }
        })
        .await?;
    drop(pool);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
