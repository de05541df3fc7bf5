//! Criterion benchmarks live in `benches/*.rs` (run with `cargo bench -p benches`); this library is
//! empty, the package exists to hold them.
