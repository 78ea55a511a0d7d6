#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/TARGET/) from real files: the repository's
fixtures, the first lines of the benchmark files in ../shared/data, a checkpoint and a prepared
corpus of the bundled main job (run `cargo xtask pretrain --steps 2` first), and a tiny GGUF
file written with the `gguf` package (pip install gguf). Kilobytes in all.

usage: python3 fuzz/make_seeds.py   (from the repository root)
"""
import glob
import json
import os
import sys

import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PMC_SHARED", os.path.join(ROOT, "..", "shared"))
FIX = os.path.join(ROOT, "crates", "pmc-model", "tests", "fixtures")


def seed(target, name, data):
    d = os.path.join(ROOT, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(path, limit=None):
    with open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit)


def head_lines(path, n):
    with open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def tiny_gguf(path):
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 1, 1, 1, 1, 1])
    w.add_token_merges(["a b", "Ġ a"])
    w.add_eos_token_id(0)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    rng = np.random.default_rng(0)
    for name, shape in [("token_embd.weight", (6, 8)), ("output_norm.weight", (8,)),
                        ("blk.0.attn_norm.weight", (8,)), ("blk.0.attn_q.weight", (8, 8)),
                        ("blk.0.attn_k.weight", (4, 8)), ("blk.0.attn_v.weight", (4, 8)),
                        ("blk.0.attn_output.weight", (8, 8)), ("blk.0.ffn_norm.weight", (8,)),
                        ("blk.0.ffn_gate.weight", (16, 8)), ("blk.0.ffn_up.weight", (16, 8)),
                        ("blk.0.ffn_down.weight", (8, 16))]:
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    path = os.path.join("/tmp", "pmc-seed.gguf")
    tiny_gguf(path)
    seed("gguf", "tiny-llama.gguf", read(path))
    for d in glob.glob(os.path.join(FIX, "*", "config.json")):
        seed("llama_config", os.path.basename(os.path.dirname(d)) + ".json", read(d))
    tc = read(os.path.join(FIX, "gqa_tied", "tokenizer_config.json"))
    chat = json.load(open(os.path.join(FIX, "chat", "chat_renders.json")))
    seed("tokenizer_config", "plain.json", tc)
    seed("tokenizer_config", "chatml.json", json.dumps({"bos_token": "<s>", "chat_template": chat[0]["source"]}))
    seed("tokenizer_config", "jinja-file", tc + b"\0" + chat[-1]["source"].encode())
    index = read(os.path.join(FIX, "bf16_sharded_llama3", "model.safetensors.index.json"))
    shard = read(os.path.join(FIX, "bf16_sharded_llama3", "model-00001-of-00005.safetensors"))
    seed("safetensors", "index+shard", index + b"\0" + shard[:4096])
    data = os.path.join(SHARED, "data")
    pqal = json.load(open(os.path.join(data, "pubmedqa", "ori_pqal.json")))
    truth = json.load(open(os.path.join(data, "pubmedqa", "test_ground_truth.json")))
    some = dict(list(pqal.items())[:2])
    seed("bench_data", "pubmedqa", b"\0" + json.dumps(some).encode() + b"\0" + json.dumps({k: truth.get(k, "yes") for k in some}).encode())
    seed("bench_data", "medqa", b"\1" + head_lines(os.path.join(data, "medqa", "test_4options.jsonl"), 2))
    seed("bench_data", "medmcqa", b"\2" + head_lines(os.path.join(data, "medmcqa", "dev.jsonl"), 3))
    seed("bench_data", "medmcqa-original", b"\2" + json.dumps({"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "subject_name": "Anatomy"}).encode() + b"\n")
    for i, line in enumerate(open(os.path.join(ROOT, "datasets", "samples", "score.jsonl"), "rb")):
        seed("score_request", f"line{i}", line.strip())
    seed("score_request", "ids", json.dumps({"context_ids": [1, 5], "continuation_ids": [3]}))
    seed("peft_config", "lora.json", json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM", "rank_pattern": {"q_proj": 4}, "alpha_pattern": {}}))
    seed("peft_config", "all-linear.json", json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear", "use_rslora": True, "exclude_modules": ["lm_head"]}))
    ckpts = sorted(glob.glob(os.path.join(ROOT, "runs", "pretrain", "checkpoints", "step-*")))
    if not ckpts:
        sys.exit("run `cargo xtask pretrain --steps 2` first (a checkpoint seeds trainer_state)")
    seed("trainer_state", "checkpoint", read(os.path.join(ckpts[-1], "trainer_state.json")) + b"\0" + read(os.path.join(ckpts[-1], "data.json")))
    manifests = sorted(glob.glob(os.path.join(ROOT, "runs", "corpora", "*", "manifest.json")))
    seed("corpus_manifest", "manifest.json", read(manifests[0]))
    print("seeds written to fuzz/corpus/")


if __name__ == "__main__":
    main()
