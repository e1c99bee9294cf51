//! Benchmarks only; see `benches/`. Run with `cargo bench -p pool-benches`.
