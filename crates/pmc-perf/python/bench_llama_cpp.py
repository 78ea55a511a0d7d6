#!/usr/bin/env python3
"""llama.cpp side of `cargo xtask bench-model --llama-cpp`: the same GGUF file through llama.cpp
(the `llama-cpp-python` package, which compiles llama.cpp from source when pip installs it),
measured as llama-bench measures it — a prompt of `seq_len` tokens in one batch with only the
last position's logits (pp) — and greedy decoding of `new_tokens` after `prompt` exactly as
ours decodes (the prompt in one batch, then one token a step, the argmax fed back). The token
ids are ours, passed in. Prints one JSON object on stdout."""
import json
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

from rss import peak_rss_bytes

args = json.loads(sys.argv[1])
threads, row, prompt, n = args["threads"], args["row"], args["prompt"], args["new_tokens"]

start = time.perf_counter()
llm = Llama(
    model_path=args["gguf"],
    n_ctx=max(len(row), len(prompt) + n) + 8,
    n_batch=len(row),
    n_ubatch=len(row),
    n_threads=threads,
    n_threads_batch=threads,
    logits_all=False,
    verbose=False,
)
load_s = time.perf_counter() - start
peak_load = peak_rss_bytes()
n_vocab = llm.n_vocab()


def last_argmax():
    """The greedy next token from the last evaluated position's logits."""
    logits = np.ctypeslib.as_array(
        llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)
    )
    return int(np.argmax(logits))


def prompt_processing():
    llm.reset()
    start = time.perf_counter()
    llm.eval(row)
    last_argmax()
    return len(row) / (time.perf_counter() - start)


def greedy_decoding():
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    for _ in range(n - 1):
        llm.eval([last_argmax()])
    last_argmax()
    return n / (time.perf_counter() - start)


prompt_processing()  # warm-up, as llama-bench does
prefill = prompt_processing()
decode = greedy_decoding()
print(json.dumps({
    "prefill_tokens_per_s": prefill,
    "decode_tokens_per_s": decode,
    "peak_rss_bytes": peak_rss_bytes(),
    "load_s": load_s,
    "peak_rss_after_load_bytes": peak_load,
    "llama_cpp_python": llama_cpp.__version__,
}))
