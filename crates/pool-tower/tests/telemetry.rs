//! Telemetry through the real OpenTelemetry SDK with its in-memory exporter: names, kinds,
//! units, attributes, and values equal to what the test did and to the pool's own stats.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::Mem;
use opentelemetry::metrics::MeterProvider;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use pool_core::{BreakerConfig, BreakerState, CloseReason, Pool, PoolBuilder};
use pool_tower::{semconv, PoolTelemetry};

struct Sdk {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Sdk {
    fn new() -> Sdk {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Sdk { provider, exporter }
    }

    /// Collects now and returns the newest export (cumulative temporality).
    fn collect(&self) -> Vec<ResourceMetrics> {
        self.exporter.reset();
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_metrics().unwrap()
    }
}

fn metric<'a>(rm: &'a [ResourceMetrics], name: &str) -> &'a Metric {
    rm.iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
        .last()
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn attrs_match(attrs: Vec<&KeyValue>, want: &[(&str, &str)]) -> bool {
    attrs.len() == want.len()
        && want.iter().all(|(k, v)| {
            attrs
                .iter()
                .any(|kv| kv.key.as_str() == *k && kv.value == Value::from(v.to_string()))
        })
}

fn keys(attrs: Vec<&KeyValue>) -> Vec<String> {
    let mut keys: Vec<_> = attrs.iter().map(|kv| kv.key.to_string()).collect();
    keys.sort();
    keys
}

/// The value of a sum (counter or up-down counter) data point with exactly these attributes.
fn sum_i64(m: &Metric, want: &[(&str, &str)]) -> i64 {
    match m.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => s
            .data_points()
            .find(|p| attrs_match(p.attributes().collect(), want))
            .map_or(0, |p| p.value() as i64),
        AggregatedMetrics::I64(MetricData::Sum(s)) => s
            .data_points()
            .find(|p| attrs_match(p.attributes().collect(), want))
            .map_or(0, |p| p.value()),
        other => panic!("{} is not an integer sum: {other:?}", m.name()),
    }
}

fn is_monotonic(m: &Metric) -> bool {
    match m.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => s.is_monotonic(),
        AggregatedMetrics::I64(MetricData::Sum(s)) => s.is_monotonic(),
        other => panic!("{} is not a sum: {other:?}", m.name()),
    }
}

fn histogram_count(m: &Metric, pool: &str) -> u64 {
    match m.data() {
        AggregatedMetrics::F64(MetricData::Histogram(h)) => {
            let p = h
                .data_points()
                .find(|p| attrs_match(p.attributes().collect(), &[(semconv::POOL_NAME, pool)]))
                .unwrap_or_else(|| panic!("no {pool} point in {}", m.name()));
            assert_eq!(
                p.bounds().collect::<Vec<_>>(),
                semconv::TIME_BUCKETS.to_vec()
            );
            p.count()
        }
        other => panic!("{} is not an f64 histogram: {other:?}", m.name()),
    }
}

fn gauge_f64(m: &Metric, want: &[(&str, &str)]) -> f64 {
    match m.data() {
        AggregatedMetrics::F64(MetricData::Gauge(g)) => g
            .data_points()
            .find(|p| attrs_match(p.attributes().collect(), want))
            .map(|p| p.value())
            .unwrap_or_else(|| panic!("no point {want:?} in {}", m.name())),
        other => panic!("{} is not an f64 gauge: {other:?}", m.name()),
    }
}

fn gauge_i64(m: &Metric, want: &[(&str, &str)]) -> i64 {
    match m.data() {
        AggregatedMetrics::I64(MetricData::Gauge(g)) => g
            .data_points()
            .find(|p| attrs_match(p.attributes().collect(), want))
            .map(|p| p.value())
            .unwrap_or_else(|| panic!("no point {want:?} in {}", m.name())),
        other => panic!("{} is not an i64 gauge: {other:?}", m.name()),
    }
}

fn pool(name: &str, telemetry: &PoolTelemetry, mem: Mem) -> Pool<Mem> {
    let pool = PoolBuilder::new()
        .name(name)
        .base_size(1)
        .max_overflow(1)
        .checkout_timeout(Duration::from_millis(100))
        .health_interval(Duration::from_secs(3600))
        .breaker(BreakerConfig {
            failure_threshold: 1,
            recovery_timeout: Duration::from_secs(1),
            success_threshold: 2,
            ..BreakerConfig::default()
        })
        .observer(telemetry.observer())
        .build(mem)
        .unwrap();
    telemetry.observe(&pool).unwrap();
    pool
}

#[tokio::test(start_paused = true)]
async fn every_instrument_reports_exactly_what_the_pool_did() {
    let sdk = Sdk::new();
    let telemetry = PoolTelemetry::new(&sdk.provider.meter("pool-tower-test"));
    let mem = Mem::default();
    let alpha = pool("alpha", &telemetry, mem.clone());
    let beta = pool("beta", &telemetry, Mem::default());
    alpha.warm_up().await.unwrap();
    beta.warm_up().await.unwrap();

    // 7 checkouts.
    for _ in 0..7 {
        drop(alpha.get().await.unwrap());
    }
    // 2 timeouts (both connections held). Those 2 checkouts count too: 9 in all.
    let a = alpha.get().await.unwrap();
    let b = alpha.get().await.unwrap();
    assert!(alpha.get().await.unwrap_err().is_timeout());
    assert!(alpha.get().await.unwrap_err().is_timeout());
    drop((a, b));
    // closed -> open -> half_open -> closed.
    mem.0.fail_connect.store(true, SeqCst);
    alpha.force_recycle();
    assert!(alpha.get().await.unwrap_err().is_circuit_open());
    mem.0.fail_connect.store(false, SeqCst);
    // Two background probes 100 ms later close it; no checkout is a probe.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(alpha.get().await.unwrap());
    assert_eq!(alpha.breaker_state(), BreakerState::Closed);
    drop(beta.get().await.unwrap());

    let truth = alpha.stats();
    let rm = sdk.collect();
    let p = |name| [(semconv::POOL_NAME, name)];

    // Histograms: seconds, explicit sub-second buckets, one point per checkout / return.
    let wait = metric(&rm, semconv::CONNECTION_WAIT_TIME);
    assert_eq!(wait.unit(), "s");
    let checkouts = truth.checkouts_direct + truth.checkouts_waited;
    assert_eq!(checkouts, 10);
    assert_eq!(histogram_count(wait, "alpha"), checkouts);
    assert_eq!(
        histogram_count(metric(&rm, semconv::CONNECTION_USE_TIME), "alpha"),
        checkouts
    );
    assert_eq!(histogram_count(wait, "beta"), 1);
    let create = metric(&rm, semconv::CONNECTION_CREATE_TIME);
    assert_eq!(histogram_count(create, "alpha"), truth.connections_created);

    // Counters.
    let timeouts = metric(&rm, semconv::CONNECTION_TIMEOUTS);
    assert_eq!(
        (timeouts.unit(), is_monotonic(timeouts)),
        ("{timeout}", true)
    );
    assert_eq!(sum_i64(timeouts, &p("alpha")), 2);
    assert_eq!(sum_i64(timeouts, &p("beta")), 0);
    let rejected = metric(&rm, semconv::BREAKER_REJECTED);
    assert_eq!(sum_i64(rejected, &p("alpha")), 1);
    assert_eq!(truth.checkouts_rejected, 1);
    let failures = metric(&rm, semconv::POOL_CREATE_FAILURES);
    assert_eq!(
        sum_i64(failures, &p("alpha")) as u64,
        truth.connection_failures
    );
    let closed = metric(&rm, semconv::POOL_CLOSED);
    assert_eq!(closed.unit(), "{connection}");
    for reason in CloseReason::ALL {
        let want = [
            (semconv::POOL_NAME, "alpha"),
            (semconv::CLOSE_REASON, reason.as_str()),
        ];
        assert_eq!(
            sum_i64(closed, &want) as u64,
            truth.connections_closed.get(reason),
            "{reason}"
        );
    }
    // Both idle connections (the base and the overflow one, which lingers) were recycled.
    assert_eq!(truth.connections_closed.forced, 2);

    let transitions = metric(&rm, semconv::BREAKER_TRANSITIONS);
    assert_eq!(transitions.unit(), "{transition}");
    let mut seen = 0;
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let want = [
            (semconv::POOL_NAME, "alpha"),
            (semconv::BREAKER_FROM, from),
            (semconv::BREAKER_TO, to),
        ];
        assert_eq!(sum_i64(transitions, &want), 1, "{from} -> {to}");
        seen += 1;
    }
    match transitions.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => assert_eq!(s.data_points().count(), seen),
        other => panic!("{other:?}"),
    }

    // Observable instruments equal the pool's own stats at rest.
    let count = metric(&rm, semconv::CONNECTION_COUNT);
    assert_eq!((count.unit(), is_monotonic(count)), ("{connection}", false));
    match count.data() {
        AggregatedMetrics::I64(MetricData::Sum(s)) => {
            for point in s.data_points() {
                assert_eq!(
                    keys(point.attributes().collect()),
                    [semconv::POOL_NAME, semconv::STATE]
                );
            }
        }
        other => panic!("{other:?}"),
    }
    let used = [(semconv::POOL_NAME, "alpha"), (semconv::STATE, "used")];
    let idle = [(semconv::POOL_NAME, "alpha"), (semconv::STATE, "idle")];
    assert_eq!(sum_i64(count, &used), i64::from(truth.in_use));
    assert_eq!(sum_i64(count, &idle), i64::from(truth.idle));
    assert_eq!(truth.in_use, 0);
    let max = metric(&rm, semconv::CONNECTION_MAX);
    assert_eq!(sum_i64(max, &p("alpha")), 2);
    assert_eq!(
        sum_i64(metric(&rm, semconv::CONNECTION_IDLE_MAX), &p("alpha")),
        1
    );
    assert_eq!(
        sum_i64(metric(&rm, semconv::CONNECTION_IDLE_MIN), &p("alpha")),
        0
    );
    let pending = metric(&rm, semconv::CONNECTION_PENDING_REQUESTS);
    assert_eq!(pending.unit(), "{request}");
    assert_eq!(sum_i64(pending, &p("alpha")), 0);
    let utilization = metric(&rm, semconv::POOL_UTILIZATION);
    assert_eq!(utilization.unit(), "1");
    assert_eq!(gauge_f64(utilization, &p("alpha")), truth.utilization);
    let breaker = metric(&rm, semconv::BREAKER_STATE_METRIC);
    for state in BreakerState::ALL {
        let want = [
            (semconv::POOL_NAME, "alpha"),
            (semconv::BREAKER_STATE, state.as_str()),
        ];
        assert_eq!(
            gauge_i64(breaker, &want),
            i64::from(state == BreakerState::Closed)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn gauges_follow_the_pool_while_it_is_busy_and_stop_when_it_is_dropped() {
    let sdk = Sdk::new();
    let telemetry = PoolTelemetry::new(&sdk.provider.meter("pool-tower-test"));
    let pool = pool("busy", &telemetry, Mem::default());
    let held = [pool.get().await.unwrap(), pool.get().await.unwrap()];
    let rm = sdk.collect();
    let count = metric(&rm, semconv::CONNECTION_COUNT);
    let used = [(semconv::POOL_NAME, "busy"), (semconv::STATE, "used")];
    assert_eq!(sum_i64(count, &used), 2);
    assert_eq!(
        gauge_f64(
            metric(&rm, semconv::POOL_UTILIZATION),
            &[(semconv::POOL_NAME, "busy")]
        ),
        1.0
    );
    drop(held);
    drop(pool);
    let rm = sdk.collect();
    let points = rm
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == semconv::CONNECTION_COUNT)
        .map(|m| match m.data() {
            AggregatedMetrics::I64(MetricData::Sum(s)) => s.data_points().count(),
            other => panic!("{other:?}"),
        })
        .sum::<usize>();
    assert_eq!(points, 0, "a dropped pool reports nothing");
}

#[tokio::test]
async fn a_second_pool_under_a_name_already_observed_is_refused_until_the_first_is_dropped() {
    let sdk = Sdk::new();
    let telemetry = PoolTelemetry::new(&sdk.provider.meter("pool-tower-test"));
    let first = pool("primary", &telemetry, Mem::default());
    // The same pool again (a clone) is not a second pool.
    telemetry.observe(&first.clone()).unwrap();
    let second = PoolBuilder::new()
        .name("primary")
        .build(Mem::default())
        .unwrap();
    let error = telemetry.observe(&second).unwrap_err();
    assert_eq!(error.name(), "primary");
    assert!(error.to_string().contains("PoolBuilder::name"), "{error}");
    // One series for the name: the first pool's (max 2; the second's would be 5).
    let rm = sdk.collect();
    let max = metric(&rm, "db.client.connection.max");
    assert_eq!(
        sum_i64(max, &[("db.client.connection.pool.name", "primary")]),
        2
    );
    let monitoring = pool_tower::Monitoring::new().pool(&first).unwrap();
    let monitoring = monitoring.pool(&first).unwrap();
    assert_eq!(
        monitoring.clone().pool(&second).unwrap_err().name(),
        "primary"
    );
    // Once the first is gone the name is free again (its start-up top-up lets go of it
    // when done: a bounded wait).
    let weak = first.downgrade();
    drop(first);
    for _ in 0..1000 {
        if weak.upgrade().is_none() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(weak.upgrade().is_none());
    telemetry.observe(&second).unwrap();
    monitoring.pool(&second).unwrap();
}
