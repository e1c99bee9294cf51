//! The OpenTelemetry SDK, configured from the standard `OTEL_*` variables.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or a per-signal endpoint) is set;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` chooses `grpc` or `http/protobuf` (default `grpc` here, as
//! the collector config listens on 4317 and 4318). `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the service; `OTEL_METRIC_EXPORT_INTERVAL` (ms) sets the
//! export period, 10 s unless given. `OTEL_SDK_DISABLED=true` turns all of it off.

use std::time::Duration;

use opentelemetry::global;
use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

pub(crate) struct Telemetry {
    providers: Option<(SdkMeterProvider, SdkTracerProvider)>,
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
    let meters = SdkMeterProvider::builder().with_resource(resource.clone());
    let tracers = SdkTracerProvider::builder().with_resource(resource);
    let (meters, tracers) = {
        let grpc = env("OTEL_EXPORTER_OTLP_PROTOCOL").is_none_or(|p| p == "grpc");
        let (metrics, spans) = if grpc {
            (
                MetricExporter::builder().with_tonic().build()?,
                SpanExporter::builder().with_tonic().build()?,
            )
        } else {
            (
                MetricExporter::builder().with_http().build()?,
                SpanExporter::builder().with_http().build()?,
            )
        };
        (
            meters
                .with_reader(
                    PeriodicReader::builder(metrics)
                        .with_interval(interval)
                        .build(),
                )
                .build(),
            tracers.with_batch_exporter(spans).build(),
        )
    };
    global::set_meter_provider(meters.clone());
    global::set_tracer_provider(tracers.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Telemetry {
        providers: Some((meters, tracers)),
        exporting_to: Some(endpoint),
    })
}

impl Telemetry {
    /// Flushes and stops both providers (they block, so off the async workers).
    pub(crate) async fn shutdown(self) {
        let Some((meters, tracers)) = self.providers else {
            return;
        };
        let result =
            tokio::task::spawn_blocking(move || (meters.shutdown(), tracers.shutdown())).await;
        if let Ok((metrics, traces)) = result {
            if let Err(e) = metrics {
                tracing::warn!(error = %e, "metrics flush at shutdown failed");
            }
            if let Err(e) = traces {
                tracing::warn!(error = %e, "trace flush at shutdown failed");
            }
        }
    }
}
