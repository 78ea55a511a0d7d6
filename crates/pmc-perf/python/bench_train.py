#!/usr/bin/env python3
"""Reference side of `cargo xtask bench-train`: PyTorch eager training of the same LLaMA
config (AdamW, batch x seq tokens per step, gradient clipping), the whole model or, with
"lora", PEFT adapters on the given projections. Prints one JSON object."""
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rss import peak_rss_bytes

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**args["config"])).train()
lora = args.get("lora")
if lora:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"],
                                             target_modules=lora["targets"], lora_dropout=0.0))
trainable = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
batch = torch.randint(0, args["config"]["vocab_size"], (args["batch"], args["seq_len"]))


def step():
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad()


step()  # warm-up
start = time.perf_counter()
for _ in range(args["steps"]):
    step()
seconds = time.perf_counter() - start


print(json.dumps({"tokens_per_s": args["steps"] * args["batch"] * args["seq_len"] / seconds,
                  "trainable_parameters": sum(p.numel() for p in trainable),
                  "peak_rss_bytes": peak_rss_bytes()}))
