#!/usr/bin/env python3
"""Would a bf16 GEMM make `--precision bf16` training faster on this CPU?

Times PyTorch's matrix products (oneDNN, which uses AVX512-BF16's VDPBF16PS where the CPU
has it) in f32 and bf16 at the shapes of `cargo xtask bench-train`'s 33.7 M config — a
micro-batch of 2 × 512 tokens through hidden 512, intermediate 1376 and vocab 8192 —
forward (x @ Wᵀ) and the two backward products, alternating f32 and bf16 rounds.

    python3 crates/pmc-perf/python/bf16_gemm.py [--threads 2] [--rounds 5]
"""
import argparse
import statistics
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--rounds", type=int, default=5)
args = parser.parse_args()
torch.set_num_threads(args.threads)

TOKENS = 2 * 512
# (rows, inner, columns) of forward x @ Wᵀ, input gradient g @ W, weight gradient gᵀ @ x.
SHAPES = []
for d_in, d_out in [(512, 512), (512, 1376), (1376, 512), (512, 8192)]:
    SHAPES += [(TOKENS, d_in, d_out), (TOKENS, d_out, d_in), (d_out, TOKENS, d_in)]
FLOPS = sum(2 * m * k * n for m, k, n in SHAPES)


def operands(dtype):
    return [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in SHAPES]


def seconds(pairs, repeats=5):
    start = time.perf_counter()
    for _ in range(repeats):
        for a, b in pairs:
            torch.matmul(a, b)
    return (time.perf_counter() - start) / repeats


f32, bf16 = operands(torch.float32), operands(torch.bfloat16)
seconds(f32, 1), seconds(bf16, 1)  # warm-up (oneDNN builds its kernels on first use)
rates = {"f32": [], "bf16": []}
for _ in range(args.rounds):
    rates["f32"].append(FLOPS / seconds(f32) / 1e9)
    rates["bf16"].append(FLOPS / seconds(bf16) / 1e9)
ratios = [b / f for f, b in zip(rates["f32"], rates["bf16"])]
print(f"torch {torch.__version__}, {args.threads} threads, {len(SHAPES)} products of one training micro-batch")
print("| products | GFLOP/s (median of %d rounds) |" % args.rounds)
print("|---|---|")
for name, values in rates.items():
    print(f"| {name} | {statistics.median(values):.1f} |")
print(f"\nbf16 / f32: {statistics.median(ratios):.2f} × ({min(ratios):.2f}–{max(ratios):.2f})")
