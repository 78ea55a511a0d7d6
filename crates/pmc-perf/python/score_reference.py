#!/usr/bin/env python3
"""The reference for `cargo xtask score`: the same JSONL in, the same JSON lines out, computed
by HF transformers (float32) the way lm-evaluation-harness does it.

    python3 crates/pmc-perf/python/score_reference.py --model DIR_OR_GGUF --input FILE.jsonl

A `.gguf` model goes through transformers' own GGUF loader (`pip install gguf`).
"""
import argparse
import json
import os

import torch
from transformers import AutoTokenizer, LlamaForCausalLM


def load(path):
    if path.endswith(".gguf"):
        d, f = os.path.split(os.path.abspath(path))
        model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    else:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path) if os.path.exists(os.path.join(path, "tokenizer.json")) else None
    return model.eval(), tok


def encode_pair(tok, context, continuation):
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglik(model, ctx, cont):
    """Summed log-probability of `cont` after `ctx` and whether it is all argmax, from one
    forward over (ctx + cont)[:-1] as lm-evaluation-harness feeds it."""
    ids = torch.tensor([(ctx + cont)[:-1]])
    logits = model(ids).logits[0, len(ctx) - 1:].float()
    logp = torch.log_softmax(logits, -1)
    target = torch.tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool((logits.argmax(-1) == target).all())


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    for line in open(args.input):
        if not line.strip():
            continue
        r = json.loads(line)
        if "context_ids" in r:
            ctx, cont = r["context_ids"], r["continuation_ids"]
        else:
            ctx, cont = encode_pair(tok, r["context"], r["continuation"])
        ll, greedy = loglik(model, ctx, cont)
        print(json.dumps({"loglik": ll, "greedy": greedy}), flush=True)


if __name__ == "__main__":
    main()
