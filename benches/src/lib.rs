//! Criterion benchmarks for the pasv crates; run them with `cargo bench -p pasv-benches` or `cargo xtask bench`.
