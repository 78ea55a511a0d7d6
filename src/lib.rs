//! pmc-llama: the workspace's umbrella crate, re-exporting its libraries for the examples.
pub use pmc_bench;
pub use pmc_model;
