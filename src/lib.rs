//! pmc-llama umbrella crate.
pub use pmc_model;
