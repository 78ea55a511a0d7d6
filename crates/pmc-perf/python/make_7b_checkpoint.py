#!/usr/bin/env python3
"""Writes a LLaMA-7B-shaped HF checkpoint with random bf16 weights (13.5 GB, sharded with an
index) for the memory benchmark of `--dtype bf16`. Never commit its output.

    python3 crates/pmc-perf/python/make_7b_checkpoint.py /tmp/llama-7b-random
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000,
           hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
           bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", hidden_act="silu")
(out / "config.json").write_text(json.dumps(cfg, indent=2))
g = torch.Generator().manual_seed(0)
h, i, v, n = 4096, 11008, 32000, 32


def rand(*shape):
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)


def shards():
    """One shard at a time, so generating never holds more than a layer."""
    yield {"model.embed_tokens.weight": rand(v, h)}
    for layer in range(n):
        p = f"model.layers.{layer}."
        yield {
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            **{p + f"self_attn.{k}_proj.weight": rand(h, h) for k in "qkvo"},
            p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
        }
    yield {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rand(v, h)}


count = n + 2
weight_map, total = {}, 0
for k, tensors in enumerate(shards()):
    name = f"model-{k + 1:05d}-of-{count:05d}.safetensors"
    save_file(tensors, out / name, metadata={"format": "pt"})
    for t, x in tensors.items():
        weight_map[t] = name
        total += x.numel() * 2
    print(f"{name}", flush=True)
(out / "model.safetensors.index.json").write_text(
    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
print(f"{total / 1e9:.1f} GB in {out}")
