//! End-to-end tests only; see `tests/pipeline.rs`. Run through `scripts/test.sh`, which
//! builds the collector and installs Prometheus.
