//! What this process computes on: the CPU, the instruction-set cap (`PMC_CPU_MAX`, see
//! `pmc_cpu`) and the kernel each run-time dispatcher picks under it. Printed by
//! `cargo xtask cpu` and by CI, so every figure and test run names the code it exercised.

/// The CPU's model name (`/proc/cpuinfo`), or `"unknown"` where it cannot be read.
pub fn model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The x86 extensions the kernels care about that this CPU reports (before the cap).
pub fn extensions() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($feature:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($feature) {
                    found.push($feature);
                })*
            };
        }
        check!(
            "avx2",
            "fma",
            "avx512f",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
    }
    found
}

/// `(work, kernel)` for every dispatcher: gemm's f32 products, flex's patched products, the
/// quantized dot products and the cross-entropy's row pass.
pub fn kernels() -> Vec<(&'static str, &'static str)> {
    let mut picked = vec![("f32 matrix products (gemm)", gemm_kernel())];
    picked.extend(burn_flex::ops::matmul::patched_kernels());
    picked.push(("quantized dot products", crate::quant::kernels().name));
    picked.push((
        "cross-entropy rows",
        crate::softmax::Kernel::detect().name(),
    ));
    picked
}

/// gemm's choice, by the same tests as its dispatcher (`init_gemm_fn` in gemm-common, whose
/// vendored copy applies the cap).
fn gemm_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && pmc_cpu::allows("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("fma") && pmc_cpu::allows("fma") {
            return "fma (AVX2)";
        }
    }
    "scalar"
}

/// A few lines naming the CPU, its extensions, the cap and the kernels picked.
pub fn describe() -> String {
    let mut text = format!(
        "cpu: {} ({} threads); extensions: {}\ncap: {}={}\n",
        model_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        extensions().join(" "),
        pmc_cpu::VARIABLE,
        pmc_cpu::cap().name()
    );
    for (work, kernel) in kernels() {
        text.push_str(&format!("  {work}: {kernel}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dispatcher_is_named() {
        let text = describe();
        assert!(
            text.contains("gemm") && text.contains("quantized"),
            "{text}"
        );
        if cfg!(target_arch = "x86_64") {
            assert!(text.contains("bf16"), "{text}");
        }
    }

    /// Under the cap no dispatcher reports an AVX-512 kernel (CI runs the suite once with
    /// `PMC_CPU_MAX=avx2`, which this checks took effect).
    #[test]
    fn the_cap_reaches_every_dispatcher() {
        if pmc_cpu::cap() < pmc_cpu::Level::Native {
            for (work, kernel) in kernels() {
                assert!(!kernel.contains("avx512"), "{work}: {kernel} under the cap");
            }
        }
    }
}
