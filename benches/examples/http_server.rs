//! One axum service, in one of several variants, for the real-HTTP comparison that
//! `scripts/http-bench.sh` drives with wrk: the same route (`GET /`, `SELECT 1` on
//! PostgreSQL) on every pool, the same pool size, the same 2-worker runtime.
//!
//! usage: `HTTP_BENCH_DATABASE_URL=postgres://… http_server VARIANT PORT POOL_SIZE` (the URL
//! through the environment, so its password is not on the command line)
//!
//! Variants:
//! - `layer`, `layer-eager`: pool-tower's layer (lazy, eager) on a pool-core pool, with
//!   telemetry (a real SDK meter provider, exporting nowhere);
//! - `bb8-core-settings`: a handler on bare bb8 (bb8-postgres) set up as pool-core sets bb8
//!   up (no check on checkout, no bb8 lifetime or idle timeout);
//! - `bb8-defaults`: the same on bb8's defaults (a ping on every checkout);
//! - `deadpool`: deadpool-postgres with `RecyclingMethod::Fast`;
//! - `sqlx`: sqlx's `PgPool`;
//! - `nodb-layer`, `nodb`: a route that never touches the database, with and without the
//!   layer in front; `nodb-extension`: the same route behind axum's `Extension` layer
//!   carrying a pool-core pool, as the other variants hand their pools to handlers (what
//!   a layer applied to the routes with `Router::layer` pays there); `nodb-layer-outer`: the
//!   layer around the whole router instead of on its routes; `nodb-identity`: the route
//!   with a layer that does nothing (tower's `Identity`), applied with `Router::layer`,
//!   which shows what axum's layering of a route costs by itself;
//! - for the breakdown: `core-direct` (a pool-core pool without the layer, the handler
//!   checking out itself) and `bb8-core-manager` (bare bb8 over pool-core's PostgreSQL
//!   manager).
//!
//! `HTTP_BENCH_QUERY=typed` runs `SELECT 1` with `query_typed` (one round trip) instead of
//! `query_one` on the tokio-postgres variants; `NO_TELEMETRY=1` leaves the telemetry observer
//! off pool-core's pools.
#![allow(missing_docs)]

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use pool_core::postgres::tokio_postgres::NoTls;
use pool_core::postgres::PostgresManager;
use pool_core::{DatabaseUrl, PoolBuilder, PoolConfig};
use pool_tower::{Db, DbError, PoolLayer, PoolTelemetry};

type Pg = PostgresManager<NoTls>;

/// `SELECT 1` the way tokio-postgres users write it: `query_one(&str)` (a prepare and an
/// execute, two round trips, then a statement close), or with `HTTP_BENCH_QUERY=typed`,
/// `query_typed` (one round trip, as sqlx's statement cache makes it).
async fn select_one(
    client: &pool_core::postgres::tokio_postgres::Client,
) -> Result<i32, pool_core::postgres::tokio_postgres::Error> {
    static TYPED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *TYPED.get_or_init(|| std::env::var("HTTP_BENCH_QUERY").is_ok_and(|q| q == "typed")) {
        let rows = client.query_typed("SELECT 1", &[]).await?;
        Ok(rows.first().map_or(0, |row| row.get(0)))
    } else {
        Ok(client.query_one("SELECT 1", &[]).await?.get(0))
    }
}

async fn layer_select(db: Db<Pg>) -> Result<&'static str, DbError> {
    let mut conn = db.conn().await?;
    let one = conn.check(select_one(&conn).await)?;
    std::hint::black_box(one);
    Ok("ok")
}

type Bb8Pg = bb8_postgres::PostgresConnectionManager<NoTls>;

/// A handler that checks out from the pool in its extension itself (no layer), the same for
/// every pool whose connections dereference to tokio-postgres' `Client`.
macro_rules! hand_written {
    ($name:ident, $pool:ty) => {
        async fn $name(Extension(pool): Extension<$pool>) -> Result<&'static str, StatusCode> {
            let conn = pool
                .get()
                .await
                .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
            let one = select_one(&conn)
                .await
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
            std::hint::black_box(one);
            Ok("ok")
        }
    };
}

hand_written!(bb8_select, bb8::Pool<Bb8Pg>);
hand_written!(core_select, pool_core::Pool<Pg>);
hand_written!(bb8_core_manager_select, bb8::Pool<Pg>);
hand_written!(deadpool_select, deadpool_postgres::Pool);

async fn sqlx_select(Extension(pool): Extension<sqlx::PgPool>) -> Result<&'static str, StatusCode> {
    let (_one,): (i32,) = sqlx::query_as("SELECT 1")
        .fetch_one(&pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("ok")
}

async fn nodb() -> &'static str {
    "ok"
}

fn fail(message: String) -> ! {
    eprintln!("http_server: {message}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [variant, port, size] = args.as_slice() else {
        fail("usage: HTTP_BENCH_DATABASE_URL=… http_server VARIANT PORT POOL_SIZE".into());
    };
    let url = std::env::var("HTTP_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| fail("HTTP_BENCH_DATABASE_URL is not set".into()));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| fail(format!("PORT {port:?}")));
    let size: u32 = size
        .parse()
        .unwrap_or_else(|_| fail(format!("POOL_SIZE {size:?}")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve(variant, port, &url, size));
}

async fn serve(variant: &str, port: u16, url: &str, size: u32) {
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let parsed = DatabaseUrl::parse(url).unwrap_or_else(|e| fail(format!("DATABASE_URL: {e}")));
    let mut config = PoolConfig::production();
    config.database_url = Some(parsed);
    config.base_size = size;
    config.max_overflow = 0;
    config.checkout_timeout = Duration::from_secs(30);
    let core_pool = || {
        let telemetry = PoolTelemetry::new(&meters.meter("http-bench"));
        let builder = PoolBuilder::postgres().config(config.clone());
        let builder = if std::env::var_os("NO_TELEMETRY").is_some() {
            builder
        } else {
            builder.observer(telemetry.observer())
        };
        let pool = builder
            .build_postgres()
            .unwrap_or_else(|e| fail(format!("pool: {e}")));
        telemetry.observe(&pool).unwrap();
        // The instruments live as long as the process.
        std::mem::forget(telemetry);
        pool
    };
    // A pool-core pool with all its connections open, as the other pools start.
    let warm_core_pool = || async {
        let pool = core_pool();
        pool.warm_up()
            .await
            .unwrap_or_else(|e| fail(format!("warm-up: {e}")));
        pool
    };
    if variant == "nodb-layer-outer" {
        // Around the router rather than on its routes (`Router::layer`): the layer's
        // service is not boxed into each route, whose boxed clone axum clones again for
        // every request (the server clones the whole service for each request either way).
        let app = tower::Layer::layer(
            &PoolLayer::new(warm_core_pool().await),
            Router::new().route("/", get(nodb)),
        );
        let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
        axum::serve(listen(variant, port).await, app).await.unwrap();
        return;
    }
    let pg_config: pool_core::postgres::tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| fail(format!("DATABASE_URL: {e}")));
    let bb8_manager = || bb8_postgres::PostgresConnectionManager::new(pg_config.clone(), NoTls);
    let app = match variant {
        "layer" | "layer-eager" | "nodb-layer" => {
            let pool = warm_core_pool().await;
            let layer = if variant == "layer-eager" {
                PoolLayer::new(pool).eager()
            } else {
                PoolLayer::new(pool)
            };
            if variant == "nodb-layer" {
                Router::new().route("/", get(nodb)).layer(layer)
            } else {
                Router::new().route("/", get(layer_select)).layer(layer)
            }
        }
        "bb8-core-settings" | "bb8-defaults" => {
            let builder = bb8::Pool::builder().max_size(size).min_idle(Some(size));
            let builder = if variant == "bb8-core-settings" {
                builder
                    .test_on_check_out(false)
                    .max_lifetime(None)
                    .idle_timeout(None)
            } else {
                builder
            };
            let pool = builder
                .build(bb8_manager())
                .await
                .unwrap_or_else(|e| fail(format!("bb8: {e:?}")));
            Router::new()
                .route("/", get(bb8_select))
                .layer(Extension(pool))
        }
        "core-direct" => Router::new()
            .route("/", get(core_select))
            .layer(Extension(warm_core_pool().await)),
        "bb8-core-manager" => {
            let pool = bb8::Pool::builder()
                .max_size(size)
                .min_idle(Some(size))
                .test_on_check_out(false)
                .max_lifetime(None)
                .idle_timeout(None)
                .build(PostgresManager::new(pg_config.clone(), NoTls))
                .await
                .unwrap_or_else(|e| fail(format!("bb8: {e:?}")));
            Router::new()
                .route("/", get(bb8_core_manager_select))
                .layer(Extension(pool))
        }
        "deadpool" => {
            let manager = deadpool_postgres::Manager::from_config(
                pg_config.clone(),
                NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            let pool = deadpool_postgres::Pool::builder(manager)
                .max_size(size as usize)
                .build()
                .unwrap_or_else(|e| fail(format!("deadpool: {e}")));
            // deadpool connects on demand: open all `size` now, as the other pools do, so
            // that no run pays for the connects (each `get` while the others are held
            // opens one more).
            let mut held = Vec::with_capacity(size as usize);
            for _ in 0..size {
                held.push(
                    pool.get()
                        .await
                        .unwrap_or_else(|e| fail(format!("deadpool warm-up: {e}"))),
                );
            }
            drop(held);
            Router::new()
                .route("/", get(deadpool_select))
                .layer(Extension(pool))
        }
        "sqlx" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(size)
                .min_connections(size)
                .connect(url)
                .await
                .unwrap_or_else(|e| fail(format!("sqlx: {e}")));
            Router::new()
                .route("/", get(sqlx_select))
                .layer(Extension(pool))
        }
        "nodb-extension" => Router::new()
            .route("/", get(nodb))
            .layer(Extension(warm_core_pool().await)),
        "nodb-identity" => Router::new()
            .route("/", get(nodb))
            .layer(tower::layer::util::Identity::new()),
        "nodb" => Router::new().route("/", get(nodb)),
        other => fail(format!("unknown variant {other:?}")),
    };
    axum::serve(listen(variant, port).await, app).await.unwrap();
}

async fn listen(variant: &str, port: u16) -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| fail(format!("bind 127.0.0.1:{port}: {e}")));
    println!("listening on 127.0.0.1:{port} ({variant})");
    listener
}
