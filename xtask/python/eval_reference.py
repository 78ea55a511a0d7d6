#!/usr/bin/env python3
"""lm-evaluation-harness-style multiple-choice scoring with HF transformers, the reference of
`cargo xtask bench-eval`: every (context, choice) pair is its own forward pass, as lm-eval's
HFLM does without caching. Reads the requests `bench-eval` writes (one JSON per question:
id, context, choices), prints one JSON per question (id, loglik per choice) and a final
timing line."""
import json
import os
import sys
import time

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

model_path, requests_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
if model_path.endswith(".gguf"):
    d, f = os.path.split(os.path.abspath(model_path))
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
else:
    model = LlamaForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_path)


def encode_pair(context, continuation):
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


questions = [json.loads(l) for l in open(requests_path)]
start = time.perf_counter()
with torch.no_grad():
    for q in questions:
        lls = []
        for choice in q["choices"]:
            ctx, cont = encode_pair(q["context"], " " + choice)
            ids = torch.tensor([(ctx + cont)[:-1]])
            logp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1:].float(), -1)
            lls.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
        print(json.dumps({"id": q["id"], "loglik": lls}), flush=True)
print(json.dumps({"seconds": time.perf_counter() - start, "questions": len(questions)}))
