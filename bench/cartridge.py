"""Cartridge costs on SmolLM2-135M: memory of the training forward/backward, generation speed, KV bytes.

Why: a cartridge is worth it when it makes the KV cache small (memory, speed) and when it can be trained on a
laptop. We measure, each configuration in a fresh subprocess (peak RSS is per process):
- `memory`: one forward + backward of `Cartridge.hidden_states` (B conversations of S tokens, LM head and a
  log-sum-exp at the last T positions only), through the cache (`gradient_checkpointing=False`) and through the
  registered attention function with gradient checkpointing (`True`): peak RSS and seconds;
- `generate`: greedy tokens/s of `Cartridge.generate` with a p-token cartridge vs. the plain model with an
  N-token corpus in context (same question, same number of new tokens), and the KV bytes of both.

    python bench/cartridge.py                       # defaults below (a few minutes on an idle 2-core CPU)
    python bench/cartridge.py --p 128 512 --batch 4 --seq 256 --corpus-tokens 2048 --new-tokens 32
"""
import argparse, json, resource, statistics, subprocess, sys, time

def rss_gb() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB

def run_memory(p, gc, batch, seq, targets) -> dict:
    import torch
    from cartridges.models import load_model
    from cartridges.cartridge import Cartridge
    model, tok = load_model("smollm2-135m")
    c = Cartridge.init(model, tok, p=p, method="random", seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (batch, seq), generator=g)
    am = torch.ones_like(ids)
    base = rss_gb()
    times = []
    for _ in range(2):  # the first step warms up allocators
        t = time.perf_counter()
        h = c.hidden_states(model, ids, am, gradient_checkpointing=gc)
        model.get_output_embeddings()(h[:, -targets:]).logsumexp(-1).sum().backward()
        times.append(time.perf_counter() - t)
        c.trainable_kv.grad = None
        del h
    return dict(bench="memory", p=p, gradient_checkpointing=gc, batch=batch, seq=seq, targets=targets,
                s_per_step=round(times[-1], 2), baseline_rss_gb=round(base, 2), peak_rss_gb=round(rss_gb(), 2))

def run_generate(p, corpus_tokens, new_tokens) -> dict:
    import torch
    from cartridges.models import load_model
    from cartridges.cartridge import Cartridge, _generation_config
    from cartridges.cartridge_use import chat_batch, kv_bytes
    model, tok = load_model("smollm2-135m")
    sentence = "The committee met on Tuesday to review the budget, the hiring plan and the schedule of the launch. "
    n = len(tok(sentence, add_special_tokens=False).input_ids)
    corpus = tok(sentence * (corpus_tokens // n + 1), add_special_tokens=False, return_tensors="pt").input_ids[0][:corpus_tokens]
    c = Cartridge.init(model, tok, p=p, method="random", seed=0)
    question = [[{"role": "user", "content": "What did the committee review?"}]]
    gen = _generation_config(model, tok, new_tokens, 0.0, 1.0)
    gen.eos_token_id = None  # always generate new_tokens tokens: same work for both
    ids = torch.cat([corpus.reshape(1, -1), chat_batch(tok, question)["input_ids"]], 1)
    def timed(fn):
        t = time.perf_counter(); fn(); return time.perf_counter() - t
    with torch.no_grad():
        icl = statistics.median(timed(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                             generation_config=gen)) for _ in range(2))
        enc = chat_batch(tok, question)
        def cart():
            model.generate(input_ids=enc["input_ids"], generation_config=gen, cache=c.cache(1, model.dtype),
                           attention_mask=torch.cat([torch.ones(1, p, dtype=torch.long), enc["attention_mask"]], 1))
        car = statistics.median(timed(cart) for _ in range(2))
    return dict(bench="generate", p=p, corpus_tokens=corpus_tokens, new_tokens=new_tokens,
                icl_s=round(icl, 2), cartridge_s=round(car, 2), speedup=round(icl / car, 2),
                icl_kv_mb=round(kv_bytes(model, corpus_tokens) / 2**20, 1), cartridge_kv_mb=round(kv_bytes(model, p) / 2**20, 1))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--batch", type=int, default=4); ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--targets", type=int, default=192)
    ap.add_argument("--corpus-tokens", type=int, default=2048); ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--only", choices=["memory", "generate"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:  # a single configuration, in this (fresh) process
        kind, *args = json.loads(a.one)
        print(json.dumps(run_memory(*args) if kind == "memory" else run_generate(*args)), flush=True); return
    jobs = []
    if a.only in (None, "memory"): jobs += [["memory", p, gc, a.batch, a.seq, a.targets] for p in a.p for gc in (False, True)]
    if a.only in (None, "generate"): jobs += [["generate", p, a.corpus_tokens, a.new_tokens] for p in a.p]
    for job in jobs:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        print(line[-1] if line else json.dumps(dict(job=job, error=out.stderr[-500:])), flush=True)

if __name__ == "__main__": main()
