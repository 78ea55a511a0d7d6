"""Drives `pmc-serve` with the official `openai` client (and raw httpx for bad requests).

Run by tests/openai_client.rs, which starts the server on a free loopback port and writes
what `cargo xtask score` and `generate --chat` compute for the same inputs to EXPECTED.

    python3 openai_client.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY \
        --expected EXPECTED.json --server-pid PID
"""

import argparse
import concurrent.futures
import json
import sys
import time

import httpx
import openai

failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures.append(what)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--expected", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    args = parser.parse_args()
    expected = json.load(open(args.expected))
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=300)
    http = httpx.Client(base_url=args.base_url, timeout=300,
                        headers={"Authorization": f"Bearer {args.api_key}"})
    model = expected["model"]

    # /v1/models
    models = client.models.list()
    check([m.id for m in models.data] == [model], f"/v1/models lists {model}")

    # Greedy chat equals `generate --chat`.
    chat = expected["chat"]
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": chat["prompt"]}],
        temperature=0, max_tokens=chat["max_tokens"])
    check(reply.choices[0].message.content == chat["text"],
          f"greedy chat answer equals generate --chat's: {reply.choices[0].message.content!r}")
    check(reply.usage.prompt_tokens == chat["prompt_tokens"]
          and reply.usage.completion_tokens == chat["completion_tokens"],
          f"chat usage counts tokens: {reply.usage}")
    check(reply.choices[0].finish_reason == chat["finish_reason"], "chat finish_reason")

    # The same, streamed.
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": chat["prompt"]}],
        temperature=0, max_tokens=chat["max_tokens"], stream=True,
        stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(pieces) == chat["text"], "streamed chat concatenates to the same answer")
    check(finish == chat["finish_reason"] and usage is not None
          and usage.completion_tokens == chat["completion_tokens"], "streamed finish and usage")

    # Prompt log-probabilities equal `cargo xtask score`'s (token ids, as lm-eval sends them;
    # max_tokens 0, and lm-eval's max_tokens 1 with [ctxlen:-1]).
    for case in expected["scores"]:
        ids = case["context_ids"] + case["continuation_ids"]
        ctx = len(case["context_ids"])
        out = client.completions.create(model=model, prompt=ids, max_tokens=0, echo=True,
                                        logprobs=1, temperature=0)
        lp = out.choices[0].logprobs
        ours = sum(lp.token_logprobs[ctx:])
        check(abs(ours - case["loglik"]) <= 1e-4 and lp.token_logprobs[0] is None,
              f"echo logprobs sum {ours:.6f} vs score {case['loglik']:.6f}")
        out = client.completions.create(model=model, prompt=[ids], max_tokens=1, echo=True,
                                        logprobs=1, temperature=0, seed=1234)
        lp = out.choices[0].logprobs
        ours = sum(lp.token_logprobs[ctx:-1])
        greedy = all(t == max(top.values()) for t, top in
                     zip(lp.token_logprobs[ctx:-1], lp.top_logprobs[ctx:-1]))
        check(abs(ours - case["loglik"]) <= 1e-4 and greedy == case["is_greedy"],
              f"lm-eval's way (max_tokens 1, [ctxlen:-1]): {ours:.6f}, greedy {greedy}")
    # Several prompts in one request come back in order, each scored.
    batch = [c["context_ids"] + c["continuation_ids"] for c in expected["scores"]]
    out = client.completions.create(model=model, prompt=batch, max_tokens=0, echo=True, logprobs=1)
    sums = [sum(c.logprobs.token_logprobs[len(s["context_ids"]):])
            for c in sorted(out.choices, key=lambda c: c.index) for s in [expected["scores"][c.index]]]
    check(all(abs(a - s["loglik"]) <= 1e-4 for a, s in zip(sums, expected["scores"])),
          "a list of token-id prompts is scored in order")
    text_case = expected["text_score"]
    out = client.completions.create(model=model, prompt=text_case["text"], max_tokens=0, echo=True,
                                    logprobs=0)
    check(out.choices[0].text == text_case["text"]
          and abs(sum(out.choices[0].logprobs.token_logprobs[1:]) - text_case["loglik"]) <= 1e-4,
          "a text prompt is echoed and scored")

    # Bad requests get OpenAI's error object with the right status.
    def error(response, status, what, param=None, code=None):
        try:
            body = response.json()["error"]
            shaped = all(k in body for k in ("message", "type", "param", "code"))
        except Exception:
            body, shaped = {}, False
        ok = (response.status_code == status and shaped
              and (param is None or body.get("param") == param)
              and (code is None or body.get("code") == code))
        check(ok, f"{what}: {response.status_code} {body.get('message', response.text[:120])!r}")

    error(http.post("/completions", content=b"{not json", headers={"content-type": "application/json"}),
          400, "malformed JSON")
    error(http.post("/chat/completions", json={"model": model, "messages": []}), 400,
          "empty messages", "messages")
    error(http.post("/completions", json={"model": model, "prompt": "hi", "temperature": 5}), 400,
          "temperature out of range", "temperature")
    error(http.post("/completions", json={"model": model, "prompt": "hi", "n": 2}), 400, "n = 2", "n")
    error(http.post("/completions", json={"model": model, "prompt": "hi", "max_tokens": "many"}), 400,
          "max_tokens of the wrong type")
    error(http.post("/completions", json={"model": model, "prompt": [5] * (expected["max_context"] + 1)}),
          400, "prompt longer than the context", "prompt", "context_length_exceeded")
    error(http.post("/completions", json={"model": model, "prompt": [10 ** 9]}), 400,
          "token id outside the vocabulary", "prompt")
    error(http.post("/completions", content=b"x" * (5 << 20)), 413, "body too large")
    server = args.base_url.removesuffix("/v1")
    error(httpx.post(server + "/tokenize", json={"prompt": "hi", "messages": []}), 400,
          "/tokenize with both a prompt and messages")
    error(httpx.post(server + "/detokenize", json={"tokens": [10 ** 9]}), 400,
          "/detokenize of a token outside the vocabulary", "tokens")
    tokenized = httpx.post(server + "/tokenize", json={"prompt": text_case["text"]}).json()
    check(tokenized["tokens"] == text_case["ids"]
          and httpx.post(server + "/detokenize", json={"tokens": tokenized["tokens"]}).json()["prompt"]
          == text_case["text"], "/tokenize and /detokenize round-trip as the library encodes")
    error(http.get("/nowhere"), 404, "unknown URL")
    error(http.get("/completions"), 405, "GET on a POST endpoint")
    error(httpx.post(args.base_url + "/completions", json={"prompt": "hi"}), 401, "no API key")
    error(httpx.post(args.base_url + "/completions", json={"prompt": "hi"},
                     headers={"Authorization": "Bearer wrong"}), 401, "wrong API key")
    try:
        openai.OpenAI(base_url=args.base_url, api_key="wrong", max_retries=0).models.list()
        check(False, "the openai client sees a wrong key as AuthenticationError")
    except openai.AuthenticationError:
        check(True, "the openai client sees a wrong key as AuthenticationError")

    # A client that disconnects mid-stream stops its generation.
    with http.stream("POST", "/completions", json={"model": model, "prompt": "Once upon a time",
                     "max_tokens": 4000, "stream": True, "temperature": 0.8, "seed": 3}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break
    deadline = time.time() + 10
    while time.time() < deadline and http.get(args.base_url.removesuffix("/v1") + "/health").json()["requests"]:
        time.sleep(0.05)
    check(http.get(args.base_url.removesuffix("/v1") + "/health").json()["requests"] == 0,
          "a disconnected stream's generation stopped")

    # 32 concurrent streaming clients, twice: every answer complete and equal to the answer
    # its prompt gets alone, and the server's memory does not grow between the rounds.
    prompts = expected["concurrent"]

    def ask(i):
        case = prompts[i % len(prompts)]
        s = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": case["prompt"]}], temperature=0,
            max_tokens=case["max_tokens"], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
        return text == case["text"]

    rss = []
    for round in range(2):
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(ask, range(32)))
        seconds = time.time() - started
        rss.append(rss_mib(args.server_pid))
        check(all(results), f"round {round + 1}: 32 concurrent clients got complete, correct answers "
              f"({sum(results)}/32 in {seconds:.1f} s; server RSS {rss[-1]:.0f} MiB)")
    check(rss[1] - rss[0] < 256, f"memory bounded: {rss[0]:.0f} → {rss[1]:.0f} MiB")

    # More requests than places: the extra ones get 503 at once, the others complete.
    def flood(_):
        return http.post("/completions", json={"model": model, "prompt": "The heart", "max_tokens": 24,
                                               "temperature": 0}).status_code

    with concurrent.futures.ThreadPoolExecutor(expected["capacity"] + 24) as pool:
        codes = list(pool.map(flood, range(expected["capacity"] + 24)))
    check(set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= expected["capacity"] // 2,
          f"queue full answers 503: {codes.count(200)} × 200, {codes.count(503)} × 503")

    print(f"{len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
