//! Criterion benchmarks live in benches/benches/; the end-to-end matrix in benches/e2e.sh.
