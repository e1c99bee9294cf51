//! OpenTelemetry metrics and spans for pools, through the `opentelemetry` API only.
//!
//! [`PoolTelemetry`] creates every instrument once. Attach [`PoolTelemetry::observer`] to a
//! pool's builder (it turns pool events into counters, histograms and spans) and call
//! [`PoolTelemetry::observe`] with the built pool (it feeds the observable gauges). Several
//! pools share one `PoolTelemetry` and are told apart by `db.client.connection.pool.name`,
//! so their names must differ: `observe` refuses a second live pool under a name already
//! observed ([`NameInUse`]).
//! Nothing here needs the layer: a background worker's pool is instrumented the same way.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pool_core::{PoolBuilder, PoolConfig};
//! use pool_tower::PoolTelemetry;
//!
//! # let rt = tokio::runtime::Runtime::new()?; let _g = rt.enter();
//! let telemetry = PoolTelemetry::new(&opentelemetry::global::meter("my-service"));
//! let pool = PoolBuilder::postgres()
//!     .config(PoolConfig::from_env()?)
//!     .observer(telemetry.observer())
//!     .build_postgres()?;
//! telemetry.observe(&pool)?;
//! # Ok(()) }
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge, ObservableUpDownCounter};
use opentelemetry::trace::{Span, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use pool_core::{
    BreakerState, CheckoutOutcome, ManageConnection, Pool, PoolEvent, PoolObserver, PoolStats,
};

use crate::semconv as names;

use crate::{NameInUse, Registered};

/// Every pool instrument, created once. Cheap to clone.
#[derive(Clone)]
pub struct PoolTelemetry {
    inner: Arc<Instruments>,
}

struct Instruments {
    wait_time: Histogram<f64>,
    use_time: Histogram<f64>,
    create_time: Histogram<f64>,
    timeouts: Counter<u64>,
    closed: Counter<u64>,
    create_failures: Counter<u64>,
    leaks: Counter<u64>,
    health_checks: Counter<u64>,
    transitions: Counter<u64>,
    rejected: Counter<u64>,
    pools: Arc<Mutex<Vec<Registered>>>,
    _observables: Observables,
}

struct Observables {
    _count: ObservableUpDownCounter<i64>,
    _max: ObservableUpDownCounter<i64>,
    _idle_max: ObservableUpDownCounter<i64>,
    _idle_min: ObservableUpDownCounter<i64>,
    _pending: ObservableUpDownCounter<i64>,
    _utilization: ObservableGauge<f64>,
    _breaker: ObservableGauge<i64>,
}

impl fmt::Debug for PoolTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pools = self.inner.pools.lock().map(|p| p.len()).unwrap_or(0);
        f.debug_struct("PoolTelemetry")
            .field("pools", &pools)
            .finish_non_exhaustive()
    }
}

fn pool_attr(name: &Value) -> KeyValue {
    KeyValue::new(names::POOL_NAME, name.clone())
}

/// Reads every registered pool once per collection. Pools that are gone are dropped from
/// the registry. A panic (a bug) is caught: a panicking callback would otherwise poison the
/// SDK's pipeline and stop all metrics of the process.
fn each_pool(pools: &Arc<Mutex<Vec<Registered>>>, mut f: impl FnMut(&Value, &PoolStats)) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Ok(mut pools) = pools.lock() else { return };
        pools.retain(|pool| match (pool.stats)() {
            Some(s) => {
                f(&Value::String(StringValue::from(pool.name.clone())), &s);
                true
            }
            None => false,
        });
    }));
}

impl PoolTelemetry {
    /// Creates every instrument on `meter`.
    pub fn new(meter: &Meter) -> Self {
        let pools: Arc<Mutex<Vec<Registered>>> = Arc::default();
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(names::TIME_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let gauge = |name: &'static str,
                     unit: &'static str,
                     description: &'static str,
                     read: fn(&PoolStats) -> i64| {
            let pools = pools.clone();
            meter
                .i64_observable_up_down_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    each_pool(&pools, |name, s| {
                        observer.observe(read(s), &[pool_attr(name)])
                    });
                })
                .build()
        };
        let observables = Observables {
            _count: {
                let pools = pools.clone();
                meter
                    .i64_observable_up_down_counter(names::CONNECTION_COUNT)
                    .with_unit("{connection}")
                    .with_description(
                        "The number of connections that are currently in state described by the `state` attribute.",
                    )
                    .with_callback(move |observer| {
                        each_pool(&pools, |name, s| {
                            for (state, n) in [("idle", s.idle), ("used", s.in_use)] {
                                observer.observe(
                                    i64::from(n),
                                    &[pool_attr(name), KeyValue::new(names::STATE, state)],
                                );
                            }
                        });
                    })
                    .build()
            },
            _max: gauge(
                names::CONNECTION_MAX,
                "{connection}",
                "The maximum number of open connections allowed.",
                |s| i64::from(s.max_size),
            ),
            _idle_max: gauge(
                names::CONNECTION_IDLE_MAX,
                "{connection}",
                "The maximum number of idle open connections allowed.",
                |s| i64::from(s.base_size),
            ),
            _idle_min: gauge(
                names::CONNECTION_IDLE_MIN,
                "{connection}",
                "The minimum number of idle open connections allowed.",
                // The pool keeps `base_size` connections open, not idle: under load all of
                // them may be in use, so the guaranteed idle minimum is zero.
                |_| 0,
            ),
            _pending: gauge(
                names::CONNECTION_PENDING_REQUESTS,
                "{request}",
                "The number of current pending requests for an open connection.",
                |s| i64::try_from(s.pending).unwrap_or(i64::MAX),
            ),
            _utilization: {
                let pools = pools.clone();
                meter
                    .f64_observable_gauge(names::POOL_UTILIZATION)
                    .with_unit("1")
                    .with_description("Connections in use divided by the maximum.")
                    .with_callback(move |observer| {
                        each_pool(&pools, |name, s| {
                            observer.observe(s.utilization, &[pool_attr(name)])
                        });
                    })
                    .build()
            },
            _breaker: {
                let pools = pools.clone();
                meter
                    .i64_observable_gauge(names::BREAKER_STATE_METRIC)
                    .with_unit("{state}")
                    .with_description(
                        "1 for the circuit breaker's current state, 0 for the others.",
                    )
                    .with_callback(move |observer| {
                        each_pool(&pools, |name, s| {
                            for state in BreakerState::ALL {
                                observer.observe(
                                    i64::from(state == s.breaker.state),
                                    &[
                                        pool_attr(name),
                                        KeyValue::new(names::BREAKER_STATE, state.as_str()),
                                    ],
                                );
                            }
                        });
                    })
                    .build()
            },
        };
        PoolTelemetry {
            inner: Arc::new(Instruments {
                wait_time: histogram(
                    names::CONNECTION_WAIT_TIME,
                    "The time it took to obtain an open connection from the pool.",
                ),
                use_time: histogram(
                    names::CONNECTION_USE_TIME,
                    "The time between borrowing a connection and returning it to the pool.",
                ),
                create_time: histogram(
                    names::CONNECTION_CREATE_TIME,
                    "The time it took to create a new connection.",
                ),
                timeouts: counter(
                    names::CONNECTION_TIMEOUTS,
                    "{timeout}",
                    "The number of connection timeouts that have occurred trying to obtain a connection from the pool.",
                ),
                closed: counter(names::POOL_CLOSED, "{connection}", "Connections closed, by reason."),
                create_failures: counter(
                    names::POOL_CREATE_FAILURES,
                    "{connection}",
                    "Connection attempts that failed.",
                ),
                leaks: counter(
                    names::POOL_LEAKS,
                    "{connection}",
                    "Connections held longer than the leak threshold.",
                ),
                health_checks: counter(names::POOL_HEALTH_CHECKS, "{check}", "Idle health probes, by result."),
                transitions: counter(
                    names::BREAKER_TRANSITIONS,
                    "{transition}",
                    "Circuit-breaker state changes.",
                ),
                rejected: counter(
                    names::BREAKER_REJECTED,
                    "{request}",
                    "Checkouts turned away by the circuit breaker.",
                ),
                pools,
                _observables: observables,
            }),
        }
    }

    /// An observer for one pool's builder
    /// ([`PoolBuilder::observer`](pool_core::PoolBuilder::observer)). Its records carry the
    /// pool's name; pass the built pool to [`PoolTelemetry::observe`], which refuses a
    /// second pool under a name already taken here.
    pub fn observer(&self) -> Arc<dyn PoolObserver> {
        Arc::new(TelemetryObserver {
            instruments: self.inner.clone(),
            attributes: OnceLock::new(),
            others: Mutex::new(HashMap::new()),
        })
    }

    /// Reports `pool`'s gauges (connections by state, max, pending, utilization, breaker
    /// state) from now on, until the pool is dropped (observing the same pool again changes
    /// nothing).
    ///
    /// # Errors
    ///
    /// [`NameInUse`] if another live pool observed here has the same name (also logged):
    /// its series would be merged with this one's. The gauges of that name stay the first
    /// pool's.
    pub fn observe<M: ManageConnection>(&self, pool: &Pool<M>) -> Result<(), NameInUse> {
        let mut pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
        Registered::new(pool)
            .join(&mut pools, "telemetry")
            .map(drop)
    }
}

/// The observer half: pool events to counters, histograms and spans.
struct TelemetryObserver {
    instruments: Arc<Instruments>,
    /// The pool-name attribute, made once (an observer normally serves one pool).
    attributes: OnceLock<(String, KeyValue)>,
    others: Mutex<HashMap<String, KeyValue>>,
}

impl TelemetryObserver {
    /// The pool-name attribute of the pool the observer was first attached to, by reference
    /// (the per-checkout records then clone nothing).
    fn first_pool_attr(&self, pool: &str) -> Option<&KeyValue> {
        let (name, attr) = self.attributes.get_or_init(|| {
            let value = Value::String(StringValue::from(Arc::<str>::from(pool)));
            (pool.to_owned(), KeyValue::new(names::POOL_NAME, value))
        });
        (name == pool).then_some(attr)
    }

    /// The same observer attached to a second pool: rare; cached per name.
    fn other_pool_attr(&self, pool: &str) -> KeyValue {
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others
            .entry(pool.to_owned())
            .or_insert_with(|| KeyValue::new(names::POOL_NAME, pool.to_owned()))
            .clone()
    }
}

fn span(name: &'static str, attributes: Vec<KeyValue>) {
    let tracer = opentelemetry::global::tracer(names::TRACER);
    let mut span = tracer
        .span_builder(name)
        .with_attributes(attributes)
        .start(&tracer);
    span.end();
}

/// The current context, if its span is sampled.
fn sampled_current() -> Option<Context> {
    Context::map_current(|cx| cx.span().span_context().is_sampled().then(|| cx.clone()))
}

/// The leak span's parent: the request that holds the connection. That is the sampled
/// OpenTelemetry context current at checkout (a native server span, or a `tracing` span
/// made current by tracing-opentelemetry's context activation), else the context of the
/// `tracing` span current at checkout, entered now (with context activation, entering it
/// makes its OpenTelemetry span current). With neither, the leak span is a root.
fn leak_parent(context: Option<&(dyn Any + Send + Sync)>, span: &tracing::Span) -> Context {
    if let Some(cx) = context.and_then(|c| c.downcast_ref::<Context>()) {
        return cx.clone();
    }
    span.in_scope(sampled_current).unwrap_or_default()
}

impl PoolObserver for TelemetryObserver {
    /// The request's trace, when sampled: the parent of a leak report for this checkout.
    fn checkout_context(&self, _pool: &str) -> Option<Box<dyn Any + Send + Sync>> {
        sampled_current().map(|cx| Box::new(cx) as Box<dyn Any + Send + Sync>)
    }

    fn on_event(&self, pool: &str, event: &PoolEvent<'_>) {
        let m = &*self.instruments;
        let other;
        let attr = match self.first_pool_attr(pool) {
            Some(attr) => attr,
            None => {
                other = self.other_pool_attr(pool);
                &other
            }
        };
        let attrs = std::slice::from_ref(attr);
        match event {
            PoolEvent::Checkout { waited, outcome } => match outcome {
                CheckoutOutcome::Ok => m.wait_time.record(waited.as_secs_f64(), attrs),
                CheckoutOutcome::Timeout => m.timeouts.add(1, attrs),
                CheckoutOutcome::CircuitOpen => m.rejected.add(1, attrs),
                _ => {}
            },
            PoolEvent::Returned { held } => m.use_time.record(held.as_secs_f64(), attrs),
            PoolEvent::ConnectionCreated { took, error: None } => {
                m.create_time.record(took.as_secs_f64(), attrs);
            }
            PoolEvent::ConnectionCreated { error: Some(_), .. } => m.create_failures.add(1, attrs),
            PoolEvent::ConnectionClosed { reason } => m.closed.add(
                1,
                &[
                    attr.clone(),
                    KeyValue::new(names::CLOSE_REASON, reason.as_str()),
                ],
            ),
            PoolEvent::BreakerTransition(t) => {
                let from = KeyValue::new(names::BREAKER_FROM, t.from.as_str());
                let to = KeyValue::new(names::BREAKER_TO, t.to.as_str());
                m.transitions
                    .add(1, &[attr.clone(), from.clone(), to.clone()]);
                span(
                    names::SPAN_BREAKER_TRANSITION,
                    vec![
                        attr.clone(),
                        from,
                        to,
                        KeyValue::new(names::BREAKER_REASON, t.reason.as_str()),
                        KeyValue::new(
                            names::BREAKER_CONSECUTIVE_FAILURES,
                            i64::from(t.consecutive_failures),
                        ),
                    ],
                );
            }
            PoolEvent::LeakSuspected {
                held,
                location,
                span,
                context,
                ..
            } => {
                m.leaks.add(1, attrs);
                let tracer = opentelemetry::global::tracer(names::TRACER);
                let mut leak = tracer
                    .span_builder(names::SPAN_LEAK)
                    .with_attributes([
                        attr.clone(),
                        KeyValue::new(names::CODE_FILE_PATH, location.file()),
                        KeyValue::new(names::CODE_LINE_NUMBER, i64::from(location.line())),
                        KeyValue::new(names::LEAK_HELD, held.as_secs_f64()),
                    ])
                    .start_with_context(&tracer, &leak_parent(*context, span));
                leak.end();
            }
            PoolEvent::ForcedRecycle {
                idle_closed,
                checked_out,
            } => span(
                names::SPAN_FORCED_RECYCLE,
                vec![
                    attr.clone(),
                    KeyValue::new(
                        names::RECYCLE_IDLE_CLOSED,
                        i64::try_from(*idle_closed).unwrap_or(i64::MAX),
                    ),
                    KeyValue::new(
                        names::RECYCLE_CHECKED_OUT,
                        i64::try_from(*checked_out).unwrap_or(i64::MAX),
                    ),
                ],
            ),
            PoolEvent::HealthCheck { ok } => m.health_checks.add(
                1,
                &[
                    attr.clone(),
                    KeyValue::new(
                        names::HEALTH_CHECK_RESULT,
                        if *ok { "ok" } else { "failed" },
                    ),
                ],
            ),
            _ => {}
        }
    }
}
