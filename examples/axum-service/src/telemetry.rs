//! The OpenTelemetry SDK, configured from the standard `OTEL_*` variables, and the `tracing`
//! subscriber that feeds it.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or a per-signal endpoint) is set;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` chooses `grpc` or `http/protobuf` (default `grpc` here, as
//! the collector config listens on 4317 and 4318). `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the service; `OTEL_METRIC_EXPORT_INTERVAL` (ms) sets the
//! export period, 10 s unless given. `OTEL_SDK_DISABLED=true` turns all of it off.
//!
//! With export on, three signals leave the process:
//!
//! - metrics: pool-tower's instruments;
//! - traces: the `tracing` spans (tower-http's request spans, through tracing-opentelemetry,
//!   whose context activation makes each entered span the current OpenTelemetry context, so
//!   the pool's checkout spans nest under the request) and pool-tower's own spans;
//! - logs: the `tracing` events (the pool's warnings among them), through the OpenTelemetry
//!   log bridge, each tied to the span it happened in.
//!
//! `RUST_LOG` filters what is printed on stderr; `OTEL_TRACING_FILTER` (same syntax, default
//! [`EXPORT_FILTER`]) filters what is exported.

use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What is exported by default: spans and events at INFO and above, except the exporters'
/// own (an exporter logging about its export would feed itself).
pub(crate) const EXPORT_FILTER: &str = "info,opentelemetry=off,opentelemetry_sdk=off,\
     opentelemetry_otlp=off,tonic=off,h2=off,hyper=off,hyper_util=off,tower=off,reqwest=off";

struct Providers {
    meters: SdkMeterProvider,
    tracers: SdkTracerProvider,
    logs: SdkLoggerProvider,
}

pub(crate) struct Telemetry {
    providers: Option<Providers>,
    pub(crate) exporting_to: Option<String>,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

pub(crate) fn init(service: &str) -> Result<Telemetry, Box<dyn std::error::Error>> {
    let resource = Resource::builder()
        .with_service_name(env("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned()))
        .build();
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
        .filter(|_| !disabled);
    let interval = env("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);

    let Some(endpoint) = endpoint else {
        // Nothing to export to: leave the global no-op providers in place (the instruments
        // then cost next to nothing).
        return Ok(Telemetry {
            providers: None,
            exporting_to: None,
        });
    };
    let grpc = env("OTEL_EXPORTER_OTLP_PROTOCOL").is_none_or(|p| p == "grpc");
    let (metrics, spans, logs) = if grpc {
        (
            MetricExporter::builder().with_tonic().build()?,
            SpanExporter::builder().with_tonic().build()?,
            LogExporter::builder().with_tonic().build()?,
        )
    } else {
        (
            MetricExporter::builder().with_http().build()?,
            SpanExporter::builder().with_http().build()?,
            LogExporter::builder().with_http().build()?,
        )
    };
    let meters = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(
            PeriodicReader::builder(metrics)
                .with_interval(interval)
                .build(),
        )
        .build();
    let tracers = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(spans)
        .build();
    let logs = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(logs)
        .build();
    global::set_meter_provider(meters.clone());
    global::set_tracer_provider(tracers.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Telemetry {
        providers: Some(Providers {
            meters,
            tracers,
            logs,
        }),
        exporting_to: Some(endpoint),
    })
}

impl Telemetry {
    /// Installs the process's `tracing` subscriber: log lines on stderr (`RUST_LOG`), and
    /// with export on, spans and events to the collector (`OTEL_TRACING_FILTER`).
    pub(crate) fn install_subscriber(&self) {
        let printed = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn")
            }));
        let exported = || {
            EnvFilter::try_from_env("OTEL_TRACING_FILTER")
                .unwrap_or_else(|_| EnvFilter::new(EXPORT_FILTER))
        };
        let spans = self.providers.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracers.tracer("axum-service"))
                .with_filter(exported())
        });
        let events = self
            .providers
            .as_ref()
            .map(|p| OpenTelemetryTracingBridge::new(&p.logs).with_filter(exported()));
        tracing_subscriber::registry()
            .with(printed)
            .with(spans)
            .with(events)
            .init();
    }

    /// Flushes and stops the providers (they block, so off the async workers).
    pub(crate) async fn shutdown(self) {
        let Some(p) = self.providers else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || {
            [
                ("metrics", p.meters.shutdown()),
                ("trace", p.tracers.shutdown()),
                ("log", p.logs.shutdown()),
            ]
        })
        .await;
        for (signal, outcome) in result.into_iter().flatten() {
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "{signal} flush at shutdown failed");
            }
        }
    }
}
