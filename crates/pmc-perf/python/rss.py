"""Peak resident set size of this process, for the reference scripts."""


def peak_rss_bytes():
    """VmHWM of this process. Not getrusage's ru_maxrss: on Linux a child's ru_maxrss starts
    from its parent's peak (kept across fork and exec), so a reference started by the Rust
    benchmark reported the benchmark's own peak when that was larger."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
