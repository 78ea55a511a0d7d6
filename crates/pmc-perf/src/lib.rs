//! Speed and memory benchmarks: each runs ours beside a reference (PyTorch eager with
//! transformers or PEFT, candle, the Python corpus pipeline) in the same invocation, in
//! alternating rounds so that the machine's drift reaches every side alike, and prints
//! medians and per-round ratios. The `cargo xtask bench-*` commands parse their flags into
//! these modules' argument types and call them.
//!
//! Benchmarks that measure one of our own commands in a child process (`bench-corpus`,
//! `bench-finetune`, `bench-fsdp`'s workers) run the current executable with that
//! command's flags: they are meant to be called from the `xtask` binary.

pub mod candle;
pub mod corpus;
pub mod eval;
pub mod finetune;
pub mod fsdp;
pub mod model;
pub mod reference;
pub mod report;
pub mod rss;
pub mod serve;
pub mod train;
