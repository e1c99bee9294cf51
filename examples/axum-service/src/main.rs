//! The main job: an axum service on a pool-core pool, instrumented with pool-tower.
//!
//! Runs with no setup on embedded SQLite; set `DATABASE_URL=postgres://…` for PostgreSQL.
//! `cargo run -p axum-service`, then see the banner.

mod routes;
mod store;
mod telemetry;

use std::io::Write;
use std::net::SocketAddr;

use pool_core::{PoolBuilder, PoolConfig};
use pool_tower::{Monitoring, PoolTelemetry};
use tracing_subscriber::EnvFilter;

use store::Store;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn")
            }),
        )
        .init();
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = PoolConfig::from_env()?;
    if config.database_url.is_none() {
        config.database_url = Some(pool_core::DatabaseUrl::parse("sqlite::memory:")?);
        // The SQLite profile allows one connection; the demo lets a few requests in at once
        // (the shared in-memory database serves several readers) unless told otherwise.
        if std::env::var_os("DB_MAX_OVERFLOW").is_none() {
            config.max_overflow = 4;
        }
    }
    let telemetry = telemetry::init("axum-service")?;
    let instruments = PoolTelemetry::new(&opentelemetry::global::meter("axum-service"));
    let (token, generated) = match std::env::var("MONITORING_TOKEN") {
        Ok(t) if !t.is_empty() => (t, false),
        _ => (random_token()?, true),
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}")).await?;
    let addr = listener.local_addr()?;

    match config.backend() {
        Some(pool_core::BackendKind::Postgres) => {
            let pool = PoolBuilder::postgres()
                .config(config)
                .observer(instruments.observer())
                .build_postgres()?;
            serve::<store::Postgres>(
                pool,
                instruments,
                listener,
                addr,
                &token,
                generated,
                &telemetry,
            )
            .await?;
        }
        _ => {
            let pool = PoolBuilder::sqlite()
                .config(config)
                .observer(instruments.observer())
                .build_sqlite()?;
            serve::<store::Sqlite>(
                pool,
                instruments,
                listener,
                addr,
                &token,
                generated,
                &telemetry,
            )
            .await?;
        }
    }
    telemetry.shutdown().await;
    tracing::info!("stopped; telemetry flushed, pool closed");
    Ok(())
}

async fn serve<S: Store>(
    pool: pool_core::Pool<S::Manager>,
    instruments: PoolTelemetry,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: &str,
    generated: bool,
    telemetry: &telemetry::Telemetry,
) -> Result<(), Box<dyn std::error::Error>> {
    instruments.observe(&pool);
    let mut conn = pool.get().await?;
    S::migrate(&mut conn).await?;
    drop(conn);
    let monitoring = Monitoring::new().token(token).pool(&pool);
    let app = routes::router::<S>(pool.clone(), monitoring);

    let base = format!("http://{addr}");
    let mut banner = vec![
        String::new(),
        format!("  axum-service on {} (pool `{}`)", S::name(), pool.name()),
        format!("  API         {base}/notes   (POST {{\"title\":…}} to create, GET to list, /notes/ID)"),
        format!("              {base}/slow?ms=500   holds a connection;   {base}/health   no database"),
        format!("  monitoring  curl -H 'Authorization: Bearer {token}' {base}/monitoring/connection-pool"),
    ];
    if generated {
        banner.push(
            "              (token generated for this run; set MONITORING_TOKEN to choose one)"
                .into(),
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

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
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
