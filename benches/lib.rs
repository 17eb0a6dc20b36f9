//! Benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p xueliang-benches`. Each prints criterion's estimates; compare the SQLite and
//! PostgreSQL lines of one run with each other rather than with numbers from another machine.
