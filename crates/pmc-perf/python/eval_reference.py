#!/usr/bin/env python3
"""lm-evaluation-harness-style multiple-choice scoring with HF transformers, the reference of
`cargo xtask bench-eval`: every (context, choice) pair is its own forward pass, as lm-eval's
HFLM does without caching. Reads the requests `bench-eval` writes (one JSON per question:
id, context, choices), prints one JSON per question (id, loglik per choice) and a final
timing line."""
import json
import sys
import time

import torch

from score_reference import encode_pair as lm_eval_encode_pair, load, loglik

model_path, requests_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
model, tok = load(model_path)


questions = [json.loads(l) for l in open(requests_path)]
start = time.perf_counter()
with torch.no_grad():
    for q in questions:
        lls = []
        for choice in q["choices"]:
            ctx, cont = lm_eval_encode_pair(tok, q["context"], " " + choice)
            lls.append(loglik(model, ctx, cont)[0])
        print(json.dumps({"id": q["id"], "loglik": lls}), flush=True)
print(json.dumps({"seconds": time.perf_counter() - start, "questions": len(questions)}))
