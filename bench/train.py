"""Training throughput of `cartridges.trainer` on SmolLM2-135M: tokens/s, s/step, peak RSS and MFU.

Why: the paper's recipe distills from a teacher whose top-k was computed *once*, during synthesis. The common
alternative (peft's cartridge example) re-runs the teacher with the chunk in context at every step. We measure both
on the same batches, B=4 conversations of S=256 tokens, at cartridge sizes p in {128, 512}, and report:
- s/step and trained tokens/s (conversation tokens per second of optimizer step, median over timed steps);
- peak RSS of a fresh process running only that configuration (each configuration runs in its own subprocess);
- MFU: model FLOPs per step / step time, against a fp32 matmul peak measured in the same run. The model is frozen,
  so a step costs about 4 x (non-embedding params) x tokens (forward + backward through activations, no weight
  gradients) + the LM head at target positions only + attention over the p prefix tokens.

    python bench/train.py                 # everything (several minutes on a 2-core CPU)
    python bench/train.py --steps 2 --p 128 512 --recipes offline online
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

B, S, CHUNK, TOPK, ANSWER = 4, 256, 512, 20, 192   # batch, conversation tokens, teacher chunk, top-k, target tokens

def matmul_peak(n=1024, reps=10) -> float:
    "Measured fp32 matmul FLOP/s (median of `reps`) on this machine, same threads as training."
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)

def model_flops(model, p, tokens, targets) -> float:
    "FLOPs of one frozen-model training step (forward + activation backward), no weight gradients."
    c = model.config
    n_embed = c.vocab_size * c.hidden_size
    layers = sum(x.numel() for x in model.parameters()) - n_embed * (1 if c.tie_word_embeddings else 2)
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attn = 2 * 2 * c.num_hidden_layers * c.num_attention_heads * hd * (p + S / 2)   # QK^T and AV per token, forward
    return 2 * (2 * layers * tokens + 2 * attn * tokens + 2 * n_embed * targets)       # x2: activation backward

def synthetic_examples(tok, n, seed=0):
    "Conversation-shaped examples: S tokens, the last ANSWER of them targets with a sorted top-k."
    import torch
    from cartridges.train_data import TrainExample
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, len(tok), (S,), generator=g)
        pos = torch.arange(S - ANSWER - 1, S - 1)
        lp = torch.log_softmax(torch.randn(ANSWER, TOPK, generator=g) * 3, -1).sort(-1, descending=True).values
        out.append(TrainExample(ids, pos, ids[pos + 1], torch.randint(0, len(tok), (ANSWER, TOPK), generator=g), lp, id=f"ex{i}"))
    return out

from cartridges.train_callbacks import Callback

class CPUClock(Callback):
    "Trainer callback: process CPU seconds per step (all threads), far less sensitive than wall time to other load."
    def before_fit(self, state): self.t, self.per_step = time.process_time(), []
    def after_step(self, state, record): t = time.process_time(); self.per_step.append(t - self.t); self.t = t

def run_one(p, recipe, steps, gc) -> dict:
    "One configuration in this process: median s/step over `steps` timed steps after one warm-up step."
    import torch
    from cartridges.models import load_model
    from cartridges.cartridge import Cartridge
    from cartridges.trainer import TrainConfig, train, read_metrics, batch_losses, collate
    model, tok = load_model("smollm2-135m")
    cartridge = Cartridge.init(model, tok, p=p, method="random", seed=0)
    examples = synthetic_examples(tok, B * (steps + 1))
    targets = ANSWER * B
    if recipe == "offline":       # the library's loop: teacher top-k precomputed by synthesis
        out = Path(tempfile.mkdtemp())
        cfg = TrainConfig(out_dir=str(out), max_steps=steps + 1, batch_size=B, micro_batch_size=B, progress=False,
                          plot=False, gradient_checkpointing=gc, bucket_batches=1)
        cpu = CPUClock()
        train(model, tok, cartridge, examples, cfg, callbacks=[cpu])
        secs = [r["seconds"] for r in read_metrics(out) if "seconds" in r][1:]
        cpu_secs = cpu.per_step[1:]
    else:                         # online teacher: re-run the model with a CHUNK-token chunk in context every step
        chunk = torch.randint(0, len(tok), (B, CHUNK))
        opt = torch.optim.AdamW(cartridge.trainable_parameters(), lr=2e-2)
        model.requires_grad_(False)
        secs, cpu_secs = [], []
        for s in range(steps + 1):
            t, c = time.perf_counter(), time.process_time()
            batch = collate(examples[s * B:(s + 1) * B], tok.pad_token_id)
            with torch.no_grad():
                logits = model(torch.cat([chunk, batch["input_ids"]], 1)).logits
                top = torch.log_softmax(logits[batch["target_rows"], CHUNK + batch["target_positions"]].float(), -1).topk(TOPK)
            del logits
            batch.update(topk_ids=top.indices, topk_logprobs=top.values)
            opt.zero_grad()
            batch_losses(model, cartridge, batch, gradient_checkpointing=gc).mean().backward()
            opt.step()
            secs.append(time.perf_counter() - t); cpu_secs.append(time.process_time() - c)
        secs, cpu_secs = secs[1:], cpu_secs[1:]
    step_s = statistics.median(secs)
    return dict(p=p, recipe=recipe, gradient_checkpointing=gc, s_per_step=step_s, tok_per_s=B * S / step_s,
                cpu_s_per_step=statistics.median(cpu_secs),
                model_tflops_per_step=model_flops(model, p, B * S, targets) / 1e12,
                peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, steps_timed=len(secs))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--recipes", nargs="+", default=["offline", "online"], choices=["offline", "online"])
    ap.add_argument("--gc", type=int, nargs="+", default=[0, 1], help="gradient checkpointing off/on (offline recipe)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: run one configuration and print JSON
    a = ap.parse_args()
    if a.one:
        p, recipe, gc = a.one.split(","); print("RESULT " + json.dumps(run_one(int(p), recipe, a.steps, gc == "1"))); return
    peak = matmul_peak()
    import torch
    rows = []
    for p in a.p:
        for recipe in a.recipes:
            for gc in (a.gc if recipe == "offline" else [0]):
                r = subprocess.run([sys.executable, __file__, "--one", f"{p},{recipe},{gc}", "--steps", str(a.steps)],
                                   capture_output=True, text=True)
                line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
                if not line: print(r.stderr[-3000:], file=sys.stderr); raise SystemExit(f"configuration p={p} {recipe} gc={gc} failed")
                row = json.loads(line[0][7:]); row["mfu"] = row["model_tflops_per_step"] * 1e12 / row["s_per_step"] / peak
                rows.append(row); print(json.dumps(row), flush=True)
    print(f"\nmatmul peak (fp32, 1024^3, {torch.get_num_threads()} threads): {peak/1e9:.1f} GFLOP/s; B={B}, S={S}, "
          f"online chunk={CHUNK} tokens\n")
    print("| p | recipe | grad ckpt | s/step | tokens/s | CPU s/step | MFU | peak RSS |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['p']} | {r['recipe']} | {'yes' if r['gradient_checkpointing'] else 'no'} | {r['s_per_step']:.2f} | "
              f"{r['tok_per_s']:.0f} | {r['cpu_s_per_step']:.1f} | {100*r['mfu']:.0f} % | {r['peak_rss_gb']:.2f} GB |")
    for p in a.p:
        off = [r for r in rows if r["p"] == p and r["recipe"] == "offline" and not r["gradient_checkpointing"]]
        on = [r for r in rows if r["p"] == p and r["recipe"] == "online"]
        if off and on: print(f"p={p}: offline / online tokens/s = {off[0]['tok_per_s'] / on[0]['tok_per_s']:.2f}x (wall), "
                             f"{on[0]['cpu_s_per_step'] / off[0]['cpu_s_per_step']:.2f}x (CPU time)")
    if a.out: Path(a.out).write_text(json.dumps(dict(matmul_peak_flops=peak, rows=rows), indent=2))

if __name__ == "__main__":
    main()
