//! Benchmarks for Switchboard: criterion micro-benchmarks (`cargo bench -p switchboard-benches`)
//! and the load scripts under `benches/load/`, which measure the built binary with third-party
//! load generators. Every figure the README quotes comes from one of them, with its command.

#![forbid(unsafe_code)]
