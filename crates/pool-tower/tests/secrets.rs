//! No password leaves the process. A property test generates passwords from the whole
//! printable range (specials and whitespace weighted up), writes a DSN in every form the
//! PostgreSQL driver accepts, drives every output the pool and the layer produce, and looks
//! for the password and for every 4-character piece of it:
//!
//! - `DatabaseUrl` (`Display`, `Debug`, redacted form, default name, JSON), `PoolConfig`
//!   (`Debug`, JSON), `UrlError`, `ConfigError` and `BuildError`;
//! - a pool against a port where nothing listens: `ConnectError`, `CheckoutError` (timeout and
//!   open breaker), `RunError`, `DbError`, the layer's 503 responses (lazy and eager, sampled
//!   traces), `PoolStats` (JSON and `Debug`), the monitoring JSON;
//! - with `POOL_TEST_DATABASE_URL`, the same against a live server whose role has the
//!   generated password (so the DSN is proven to mean what the generator meant);
//! - every log line (a capturing subscriber), every metric data point's attributes (the SDK's
//!   in-memory exporter) and every span's attributes, events and status.
//!
//! The global tracer provider, meter provider and subscriber make this file its own test
//! binary, with one test.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry::global;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use pool_core::postgres::tokio_postgres::NoTls;
use pool_core::postgres::PostgresManager;
use pool_core::{BreakerConfig, DatabaseUrl, Pool, PoolBuilder, PoolConfig};
use pool_tower::{Db, Monitoring, PoolLayer, PoolTelemetry};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use tower::{service_fn, Layer, ServiceExt};

type Pg = PostgresManager<NoTls>;

const TOKEN: &str = "monitoring-token-for-the-secrets-test";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Checkouts that reached a live server: proof that the live half of the test ran.
static LIVE_CHECKOUTS: AtomicUsize = AtomicUsize::new(0);

/// Every form of DSN the driver reads.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `postgres://app:<password as is>@host:port/db`: raw `/ ? # : %` and spaces.
    UrlRaw,
    /// `postgresql://app:<percent-encoded>@host:port/db?sslmode=disable`.
    UrlEncoded,
    /// `postgres://host:port/db?user=app&password=<percent-encoded>`.
    QueryParameter,
    /// Two hosts: `postgres://app:<percent-encoded>@host:port,localhost:port/db`.
    SeveralHosts,
    /// `host=… password='<quotes and backslashes escaped>'`.
    KeyValueQuoted,
    /// `host=… password=<whitespace, quotes and backslashes escaped, unquoted>`.
    KeyValueEscaped,
    /// `host = …<tab>password = '…'`: whitespace around `=` and between pairs.
    KeyValueSpaced,
    /// `postgres://host:port/db?user=app&password=<as is>`: a raw query-string value.
    QueryParameterRaw,
    /// `host=… password=<as is>`: unquoted and unescaped, as a hurried user writes it.
    KeyValueRaw,
}

const FORMS: [Form; 9] = [
    Form::QueryParameterRaw,
    Form::KeyValueRaw,
    Form::UrlRaw,
    Form::UrlEncoded,
    Form::QueryParameter,
    Form::SeveralHosts,
    Form::KeyValueQuoted,
    Form::KeyValueEscaped,
    Form::KeyValueSpaced,
];

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
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

fn dsn(form: Form, user: &str, password: &str, port: u16, db: &str) -> String {
    let enc = percent_encode(password);
    match form {
        Form::UrlRaw => format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}"),
        Form::UrlEncoded => {
            format!("postgresql://{user}:{enc}@127.0.0.1:{port}/{db}?sslmode=disable")
        }
        Form::QueryParameter => {
            format!("postgres://127.0.0.1:{port}/{db}?user={user}&password={enc}")
        }
        Form::SeveralHosts => {
            format!("postgres://{user}:{enc}@127.0.0.1:{port},localhost:{port}/{db}")
        }
        Form::KeyValueQuoted => format!(
            "host=127.0.0.1 port={port} dbname={db} user={user} password='{}'",
            quoted(password)
        ),
        Form::KeyValueEscaped => format!(
            "host=127.0.0.1 port={port} dbname={db} user={user} password={}",
            escaped(password)
        ),
        Form::QueryParameterRaw => {
            format!("postgres://127.0.0.1:{port}/{db}?user={user}&password={password}")
        }
        Form::KeyValueRaw => {
            format!("host=127.0.0.1 port={port} dbname={db} user={user} password={password}")
        }
        Form::KeyValueSpaced => format!(
            "host = 127.0.0.1\tport =  {port}  dbname\t= {db}   user ={user} password = '{}'",
            quoted(password)
        ),
    }
}

/// What the driver must make of a password written into a form.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Read back exactly.
    RoundTrip,
    /// Read back exactly, or refused (a raw `?` before `name=` in a URL password is
    /// ambiguous with a parameter).
    RoundTripOrRefusal,
    /// Refused: a raw `@` the driver would misread.
    Refusal,
    /// Anything but a leak: percent-decoding, `&` and whitespace in raw forms change what
    /// the driver reads, and an unquoted value may be rejected.
    Anything,
}

fn expect(form: Form, password: &str) -> Expect {
    let trailing_space = password.ends_with(char::is_whitespace);
    match form {
        Form::UrlRaw if password.contains('@') => Expect::Refusal,
        Form::UrlRaw if password.contains('%') => Expect::Anything,
        Form::UrlRaw if password.contains('?') && password.contains('=') => {
            Expect::RoundTripOrRefusal
        }
        Form::QueryParameterRaw if password.contains('@') => Expect::Refusal,
        Form::QueryParameterRaw if password.contains(['%', '&']) || trailing_space => {
            Expect::Anything
        }
        Form::KeyValueRaw
            if password.contains(|c: char| c.is_whitespace() || c == '\\')
                || password.starts_with('\'') =>
        {
            Expect::Anything
        }
        _ => Expect::RoundTrip,
    }
}

/// Printable characters, specials and whitespace weighted up, a little non-ASCII.
fn password() -> impl Strategy<Value = String> {
    let specials: Vec<char> = "/?#@:%&=' \"\\\t,;[]{}!$*+".chars().collect();
    let ch = prop_oneof![
        6 => proptest::char::range(' ', '~'),
        3 => proptest::sample::select(specials),
        1 => proptest::sample::select(vec!['é', 'ß', 'Ж', '漢', '€']),
    ];
    proptest::collection::vec(ch, 8..24).prop_map(|chars| chars.into_iter().collect())
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

struct Sinks {
    logs: Captured,
    spans: InMemorySpanExporter,
    tracer_provider: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meter_provider: SdkMeterProvider,
    telemetry: PoolTelemetry,
}

impl Sinks {
    fn install() -> Sinks {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        global::set_tracer_provider(tracer_provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let telemetry = PoolTelemetry::new(&opentelemetry::metrics::MeterProvider::meter(
            &meter_provider,
            "secrets-test",
        ));
        Sinks {
            logs,
            spans,
            tracer_provider,
            metrics,
            meter_provider,
            telemetry,
        }
    }

    /// Everything exported or logged since the last call.
    fn drain(&self, out: &mut String) {
        self.tracer_provider.force_flush().unwrap();
        self.meter_provider.force_flush().unwrap();
        let _ = write!(out, "\n{:?}", self.spans.get_finished_spans().unwrap());
        let _ = write!(out, "\n{:?}", self.metrics.get_finished_metrics().unwrap());
        self.spans.reset();
        self.metrics.reset();
        out.push_str(&self.logs.take());
    }
}

async fn body_text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    format!("{parts:?} {}", String::from_utf8_lossy(&bytes))
}

fn sampled(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("traceparent", TRACEPARENT)
        .body(Body::empty())
        .unwrap()
}

/// A request through the layer (lazy: the handler's own error text is the body; eager: the
/// layer's rejection), the monitoring report, and the pool's stats.
async fn through_the_layer(pool: &Pool<Pg>, out: &mut String) {
    let handler = service_fn(|req: Request<Body>| async move {
        let db = req.extensions().get::<Db<Pg>>().cloned().unwrap();
        let text = match db.conn().await {
            Ok(conn) => match conn.query_one("select current_user", &[]).await {
                Ok(row) => row.get::<_, String>(0),
                Err(e) => format!("{e} {e:?}"),
            },
            Err(e) => format!("{e} {e:?}"),
        };
        Ok::<_, std::convert::Infallible>(Response::new(text))
    });
    for layer in [
        PoolLayer::new(pool.clone()).lazy(),
        PoolLayer::new(pool.clone()).eager(),
    ] {
        let response = layer.layer(handler).oneshot(sampled("/q")).await;
        out.push_str(&body_text(response.unwrap()).await);
    }
    let router = Monitoring::new()
        .token(TOKEN)
        .pool(pool)
        .unwrap()
        .into_router();
    for path in [
        "/monitoring/connection-pool",
        "/monitoring/circuit-breakers",
    ] {
        let req = Request::get(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        out.push_str(&body_text(response).await);
    }
    let stats = pool.stats();
    let _ = write!(
        out,
        "\n{stats:?}\n{}",
        serde_json::to_string(&stats).unwrap()
    );
}

/// Every output for one DSN against `127.0.0.1:port`; `live` when a server with this
/// password answers there.
async fn outputs(sinks: &Sinks, text: &str, port_is_live: bool) -> Result<String, TestCaseError> {
    // What an earlier case left behind is not this case's output.
    sinks.drain(&mut String::new());
    let mut out = String::new();
    let url = match DatabaseUrl::parse(text) {
        Ok(url) => url,
        Err(e) => {
            let _ = write!(out, "{e} {e:?}");
            let config = PoolConfig::from_env_with(|k| (k == "DATABASE_URL").then(|| text.into()));
            let err = config.unwrap_err();
            let _ = write!(out, "\n{err} {err:?}");
            let err = PoolBuilder::postgres()
                .database_url(text)
                .build_postgres()
                .unwrap_err();
            let _ = write!(out, "\n{err} {err:?}");
            sinks.drain(&mut out);
            return Ok(out);
        }
    };
    let _ = write!(
        out,
        "{url} {url:?} {} {} {}",
        url.redacted(),
        url.default_pool_name(),
        serde_json::to_string(&url).unwrap()
    );
    let vars = |k: &str| match k {
        "DATABASE_URL" => Some(text.to_owned()),
        "DB_POOL_PROFILE" => Some("production".to_owned()),
        _ => None,
    };
    let config = PoolConfig::from_env_with(vars).unwrap();
    let _ = write!(
        out,
        "\n{config:?} {}",
        serde_json::to_string(&config).unwrap()
    );
    let err = PoolConfig::from_env_with(|k| {
        if k == "DB_POOL_SIZE" {
            Some("many".into())
        } else {
            vars(k)
        }
    })
    .unwrap_err();
    let _ = write!(out, "\n{err} {err:?}");
    let err = PoolBuilder::postgres()
        .config(config.clone())
        .base_size(0)
        .max_overflow(0)
        .build_postgres()
        .unwrap_err();
    let _ = write!(out, "\n{err} {err:?}");

    // A closed port refuses at once, and the short bounds keep each case quick; a live
    // server's connect (its password exchange) can take longer than that on a loaded
    // machine, and there a timeout would fail the case for the wrong reason.
    let bound = if port_is_live {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(150)
    };
    let pool = PoolBuilder::postgres()
        .config(config)
        .base_size(0)
        .max_overflow(2)
        .checkout_timeout(bound)
        .connect_timeout(bound)
        .health_interval(Duration::from_secs(3600))
        .breaker(BreakerConfig {
            failure_threshold: 2,
            ..BreakerConfig::default()
        })
        .observer(sinks.telemetry.observer())
        .build_postgres()
        .unwrap();
    sinks.telemetry.observe(&pool).unwrap();
    if let Err(e) = pool.warm_up().await {
        let _ = write!(out, "\n{e} {e:?}");
    }
    for _ in 0..3 {
        match pool.get().await {
            Ok(conn) => {
                let user: String = conn
                    .query_one("select current_user", &[])
                    .await
                    .unwrap()
                    .get(0);
                prop_assert_eq!(user, "pool_secret");
                LIVE_CHECKOUTS.fetch_add(1, SeqCst);
            }
            Err(e) => {
                prop_assert!(!port_is_live, "a live server refused: {}", e);
                let _ = write!(out, "\n{e} {e:?}");
            }
        }
    }
    let ran = pool
        .run(|conn| Box::pin(async move { conn.simple_query("select 1").await.map(|_| ()) }))
        .await;
    if let Err(e) = ran {
        let _ = write!(out, "\n{e} {e:?}");
    }
    through_the_layer(&pool, &mut out).await;
    drop(pool);
    sinks.drain(&mut out);
    Ok(out)
}

/// `text` holds neither `password` nor a 4-character piece of it, other than pieces that
/// the same outputs hold for another password (`control`: host names, field names) and
/// pieces made only of hex digits and dots, which trace ids, timestamps and measured
/// durations hold by chance (the whole password is still checked).
fn check_no_piece(text: &str, password: &str, control: &str) -> Result<(), TestCaseError> {
    prop_assert!(!text.contains(password), "the whole password in:\n{}", text);
    let chars: Vec<char> = password.chars().collect();
    for piece in chars.windows(4) {
        if piece.iter().all(|c| c.is_ascii_hexdigit() || *c == '.') {
            continue;
        }
        let piece: String = piece.iter().collect();
        if control.contains(&piece) {
            continue;
        }
        prop_assert!(
            !text.contains(&piece),
            "`{}` of the password `{}` in:\n{}",
            piece,
            password,
            text
        );
    }
    Ok(())
}

/// With a live server: a role whose password is the generated one.
struct Live {
    admin: pool_core::postgres::tokio_postgres::Client,
    port: u16,
}

impl Live {
    async fn connect() -> Option<Live> {
        let url = common::pg_url("no_password_or_piece_of_one_in_any_output")?;
        let parsed = DatabaseUrl::parse(&url).unwrap();
        let config = parsed.postgres_config().unwrap().clone();
        let port = config.get_ports()[0];
        let (admin, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(
                "DO $$ BEGIN CREATE ROLE pool_secret LOGIN; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            )
            .await
            .unwrap();
        Some(Live { admin, port })
    }

    async fn set_password(&self, password: &str) {
        // A literal, not a parameter: ALTER ROLE takes none. Only `'` needs doubling with
        // standard_conforming_strings (the default).
        let sql = format!(
            "ALTER ROLE pool_secret PASSWORD '{}'",
            password.replace('\'', "''")
        );
        self.admin.batch_execute(&sql).await.unwrap();
    }
}

#[test]
fn no_password_or_piece_of_one_in_any_output() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sinks = Sinks::install();
    let live = rt.block_on(Live::connect());
    let closed = common::closed_port();

    // What the outputs hold whatever the password is.
    let mut control = String::new();
    for form in FORMS {
        let text = dsn(form, "app", "Kq7Jw2Xz9Vb4", closed, "orders");
        control.push_str(&rt.block_on(outputs(&sinks, &text, false)).unwrap());
        if let Some(live) = &live {
            rt.block_on(live.set_password("Kq7Jw2Xz9Vb4"));
            let text = dsn(form, "pool_secret", "Kq7Jw2Xz9Vb4", live.port, "postgres");
            control.push_str(&rt.block_on(outputs(&sinks, &text, true)).unwrap());
        }
    }

    let control_checkouts = LIVE_CHECKOUTS.load(SeqCst);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = (proptest::sample::select(FORMS.to_vec()), password());
    let result = runner.run(&strategy, |(form, password)| {
        let text = dsn(form, "app", &password, closed, "orders");
        let expected = expect(form, &password);
        let read_back = match DatabaseUrl::parse(&text) {
            Ok(url) => {
                prop_assert_ne!(expected, Expect::Refusal, "{:?} accepted: {}", form, url);
                let read = url.postgres_config().unwrap().get_password();
                let same = read == Some(password.as_bytes());
                if matches!(expected, Expect::RoundTrip | Expect::RoundTripOrRefusal) {
                    prop_assert!(same, "{:?} read the password as {:?}", form, read);
                }
                same
            }
            Err(e) => {
                prop_assert!(
                    !matches!(expected, Expect::RoundTrip),
                    "{:?} of a valid DSN refused: {}",
                    form,
                    e
                );
                false
            }
        };
        let out = rt.block_on(outputs(&sinks, &text, false))?;
        check_no_piece(&out, &password, &control)?;
        if let (Some(live), true) = (&live, read_back) {
            rt.block_on(live.set_password(&password));
            let text = dsn(form, "pool_secret", &password, live.port, "postgres");
            let out = rt.block_on(outputs(&sinks, &text, true))?;
            check_no_piece(&out, &password, &control)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    if live.is_some() {
        assert!(
            LIVE_CHECKOUTS.load(SeqCst) > control_checkouts,
            "the generated cases reached the live server"
        );
    }
}
