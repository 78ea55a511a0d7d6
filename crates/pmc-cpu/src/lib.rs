//! Which x86 instruction-set extensions the kernels picked at run time may use: those the
//! CPU reports, capped by the `PMC_CPU_MAX` environment variable.
//!
//! Every dispatcher of the workspace asks here before it takes a wide path: gemm's
//! micro-kernels (vendor/gemm-common), flex's bf16 and one-row f32 products
//! (vendor/burn-flex) and the quantized dot products (pmc-model). With `PMC_CPU_MAX=avx2` an
//! AVX-512 machine runs exactly the kernels an AVX2-only machine (a Zen 3, most laptops)
//! runs, so one test run checks both; `scalar` also turns off AVX/AVX2/FMA in those
//! dispatchers. burn-flex's element-wise SIMD (macerator, at most AVX2 as flex builds it) is
//! not capped. This crate has no dependencies so that the vendored crates can use it.

use std::sync::OnceLock;

/// The environment variable that caps the instruction sets.
pub const VARIABLE: &str = "PMC_CPU_MAX";

/// Instruction-set levels, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The x86-64 baseline (SSE2): portable code only.
    Scalar,
    /// AVX, AVX2, FMA and F16C: what an AVX2-only CPU runs.
    Avx2,
    /// Everything the CPU reports, AVX-512 included (the default).
    Native,
}

impl Level {
    /// The level a target feature (as `is_x86_feature_detected!` names it) belongs to.
    pub fn of_feature(feature: &str) -> Level {
        if feature.starts_with("avx512") || feature.starts_with("amx") {
            Level::Native
        } else if feature.starts_with("avx") || matches!(feature, "fma" | "f16c") {
            Level::Avx2
        } else {
            Level::Scalar
        }
    }

    /// The name `PMC_CPU_MAX` takes for this level.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Native => "native",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" => Ok(Level::Scalar),
            "avx2" => Ok(Level::Avx2),
            "native" | "avx512" | "" => Ok(Level::Native),
            other => Err(format!(
                "{VARIABLE}={other:?}: expected native (the default), avx512, avx2 or scalar"
            )),
        }
    }
}

/// The cap in force, read from `PMC_CPU_MAX` once per process.
///
/// # Panics
/// When the variable holds something other than a level's name: a kernel silently left
/// wide would make a run that was meant to check the portable paths check nothing.
pub fn cap() -> Level {
    static CAP: OnceLock<Level> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var(VARIABLE) {
        Ok(value) => value.parse().unwrap_or_else(|e: String| panic!("{e}")),
        Err(_) => Level::Native,
    })
}

/// Whether kernels may use `feature` (a target-feature name such as `"avx512f"` or `"fma"`)
/// under the cap; the caller still checks that the CPU has it.
pub fn allows(feature: &str) -> bool {
    Level::of_feature(feature) <= cap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_fall_into_their_levels() {
        assert_eq!(Level::of_feature("avx512f"), Level::Native);
        assert_eq!(Level::of_feature("avx512bf16"), Level::Native);
        assert_eq!(Level::of_feature("avx512vnni"), Level::Native);
        assert_eq!(Level::of_feature("avx2"), Level::Avx2);
        assert_eq!(Level::of_feature("fma"), Level::Avx2);
        assert_eq!(Level::of_feature("avx"), Level::Avx2);
        assert_eq!(Level::of_feature("sse4.1"), Level::Scalar);
    }

    #[test]
    fn the_variable_names_levels_and_refuses_the_rest() {
        assert_eq!("avx2".parse::<Level>(), Ok(Level::Avx2));
        assert_eq!("AVX512".parse::<Level>(), Ok(Level::Native));
        assert_eq!("scalar".parse::<Level>(), Ok(Level::Scalar));
        let err = "avx3".parse::<Level>().unwrap_err();
        assert!(err.contains("PMC_CPU_MAX") && err.contains("avx3"), "{err}");
    }

    #[test]
    fn the_cap_orders_the_levels() {
        assert!(Level::Scalar < Level::Avx2 && Level::Avx2 < Level::Native);
    }
}
