//! pmc-llama: the workspace's umbrella crate, re-exporting its libraries for the examples.
pub use pmc_bench;
pub use pmc_corpus;
pub use pmc_fsdp;
pub use pmc_model;
pub use pmc_peft;
pub use pmc_train;
