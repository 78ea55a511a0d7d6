#!/usr/bin/env python3
"""Reference side of `cargo xtask bench-model`: the same LLaMA config and workloads in
PyTorch eager + transformers. Prints one JSON object on stdout."""
import json
import sys
import time

import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rss import peak_rss_bytes

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
load_s = None
if args.get("gguf"):
    # transformers' own GGUF loader (dequantises to f32).
    start = time.perf_counter()
    d, f = os.path.split(os.path.abspath(args["gguf"]))
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start
    config = model.config
else:
    config = LlamaConfig(**args["config"])
    model = LlamaForCausalLM(config).eval()
peak_load = peak_rss_bytes()
seq, rows = args["seq_len"], args["rows"]
g = torch.Generator().manual_seed(1)
data = torch.randint(0, config.vocab_size, (rows, seq), generator=g)

with torch.no_grad():
    model(data[:1, :32])  # warm-up
    start = time.perf_counter()
    for r in range(rows):
        ids = data[r : r + 1]
        logits = model(ids).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        float(logp.gather(1, ids[0, 1:, None]).sum())
    score_s = time.perf_counter() - start
    peak_score = peak_rss_bytes()

    # One pass over a row, only the last position's logits (llama-bench's pp).
    start = time.perf_counter()
    int(model(data[:1], logits_to_keep=1).logits[0, -1].argmax())
    prefill_s = time.perf_counter() - start

    prompt = data[:1, : args["prompt_len"]]
    n = args["new_tokens"]
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   pad_token_id=0, eos_token_id=None)
    decode_s = time.perf_counter() - start

print(json.dumps({
    "score_tokens_per_s": rows * seq / score_s,
    "prefill_tokens_per_s": seq / prefill_s,
    "decode_tokens_per_s": n / decode_s,
    "peak_rss_bytes": peak_score,
    "load_s": load_s,
    "peak_rss_after_load_bytes": peak_load,
    "torch": torch.__version__,
}))
