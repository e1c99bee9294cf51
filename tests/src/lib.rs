//! End-to-end tests: `tests/pipeline.rs` (the telemetry pipeline) and `tests/faults.rs` (the
//! fault suite), with the fault suite's parts in [`fault`]. Run through `scripts/test.sh`,
//! which starts PostgreSQL, builds the collector and installs Prometheus and nftables.

pub mod fault;
