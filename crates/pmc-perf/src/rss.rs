//! Peak resident set size: of this process (Linux's `VmHWM`, reset through `clear_refs`),
//! and of a child process that printed it.

/// Peak resident set size of this process since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Prints this process's peak RSS as a `peak RSS: N MiB` line (the line
/// [`parse_peak_rss`] reads back from a child process's output).
pub fn print_peak_rss() {
    if let Some(rss) = peak_rss() {
        println!("peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
}

/// The MiB of a `peak RSS: N MiB` line in `output`.
pub fn parse_peak_rss(output: &str) -> Option<f64> {
    output.lines().find_map(|l| {
        l.strip_prefix("peak RSS: ")?
            .strip_suffix(" MiB")?
            .parse()
            .ok()
    })
}

/// Resets the kernel's peak-RSS counter of this process (Linux: `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
