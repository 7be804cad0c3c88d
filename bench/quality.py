"""Quality vs KV memory on kite-launch with SmolLM2-135M: self-study, train cartridges, evaluate every method.

Why: the product's claim is that a cartridge of p tokens recovers what the whole corpus in context gives, at a
fraction of the KV cache. This script runs the whole pipeline on the project's public benchmark corpus
(dossier-bench `kite-launch`, ~5.7k tokens, 7 grounded questions with must-facts) and compares
no context · ICL (raw tokens before the chat, and in the system prompt) · truncation · summary · cartridges at
p in --ps, plus the paper's ablations at --p-ablate: init (random / unrelated text / corpus), objective
(distillation vs next-token), seed prompts (five families vs generic only).

    python bench/quality.py                      # the full configuration (see defaults; ~45-60 min on 2 idle cores)
    python bench/quality.py --n-convs 16 --steps 6 --ps 128 512 --max-new-tokens 24   # a reduced one

Every stage is resumable: data, trained cartridges and the summary are reused from --out when present, so an
interrupted run continues where it stopped. Results: --out/eval/{report.csv,report.json,answers.jsonl,frontier.html}
and a markdown table on stdout.
"""
import argparse, json, time
from pathlib import Path
import torch
from cartridges.cartridge import Cartridge
from cartridges.clients import HFClient
from cartridges.eval import CartridgeMethod, InContext, NoContext, Summary, Truncation, evaluate, load_dossier
from cartridges.models import load_model, tiny_model
from cartridges.resources import SeedPrompts
from cartridges.synthesis import SelfStudy, synthesize
from cartridges.trainer import TrainConfig, train

UNRELATED_TEXT = ("The history of the bicycle spans more than two centuries. Early designs had no pedals; riders pushed "
                  "along the ground with their feet. Pedals on the front wheel came later, then the chain drive, which "
                  "made the modern safety bicycle possible. Pneumatic tyres made riding comfortable on rough roads. ") * 40

def log(msg): print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

def data(model, tok, resource, out, n, families, args):
    "Self-study conversations (resumable); `families=None` is all six."
    ss = SelfStudy(HFClient(model, tok, batch_size=args.synth_batch), resource, seed_prompts=SeedPrompts(families, seed=args.seed),
                   max_tokens_a=args.max_tokens_a, max_tokens_b=args.max_tokens_b, seed=args.seed)
    t0 = time.time(); df = synthesize(ss, n=n, out_dir=out, batch_size=args.synth_batch, progress=False)
    log(f"data {out.name}: {len(df)} conversations ({time.time() - t0:.0f}s)")
    return df

def cartridge(model, tok, resource, data_df, out, p, args, init="corpus", objective="distill"):
    "A trained cartridge, reused from `out/cartridge` when a previous run finished it."
    if (out/"cartridge"/"meta.json").exists(): return Cartridge.load(out/"cartridge", model=model)
    kw = dict(text=UNRELATED_TEXT) if init == "text" else dict(resource=resource) if init == "corpus" else {}
    c = Cartridge.init(model, tok, p=p, method=init, seed=args.seed, **kw)
    cfg = TrainConfig(out_dir=str(out), objective=objective, lr=args.lr, max_steps=args.steps, batch_size=args.batch_size,
                      micro_batch_size=args.micro_batch_size, max_seq_len=args.max_seq_len, progress=False, plot=False, seed=args.seed)
    t0 = time.time(); c = train(model, tok, c, data_df, cfg)
    log(f"trained {out.name}: {args.steps} steps in {time.time() - t0:.0f}s, final loss {c.meta['training'].get('final_loss')}")
    return c

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--ps", type=int, nargs="+", default=[128, 512, 1024], help="cartridge / truncation / summary budgets")
    ap.add_argument("--p-ablate", type=int, default=128, help="p of the ablations")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--ablations", nargs="+", default=["init", "objective", "seeds"], choices=["init", "objective", "seeds"])
    ap.add_argument("--skip-main", action="store_true", help="only the ablations (reusing data and the main cartridge at --p-ablate)")
    ap.add_argument("--n-convs", type=int, default=128, help="self-study conversations (six families)")
    ap.add_argument("--n-convs-generic", type=int, default=None, help="conversations for the generic-seed ablation (default: --n-convs)")
    ap.add_argument("--max-tokens-a", type=int, default=64)
    ap.add_argument("--max-tokens-b", type=int, default=128)
    ap.add_argument("--synth-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32, help="optimizer steps per cartridge")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-generate", action="store_true", help="loss eval only")
    ap.add_argument("--no-summary", action="store_true")
    ap.add_argument("--model", default="smollm2-135m", help="a model name/path, or 'tiny' (random 2-layer model: a smoke test)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, t_start = Path(args.out), time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out/"args.json").write_text(json.dumps(vars(args), indent=1))
    model, tok = tiny_model() if args.model == "tiny" else load_model(args.model, dtype=getattr(torch, args.dtype))
    resource, questions = load_dossier("kite-launch")
    log(f"kite-launch: {resource.stats(tok)['n_tokens']} tokens, {len(questions)} questions; args {vars(args)}")

    convs = data(model, tok, resource, out/"data", args.n_convs, None, args)
    methods = [NoContext(), InContext(resource), InContext(resource, where="system")]
    for p in args.ps:
        methods.append(Truncation(resource, p))
        if not args.no_summary and not args.skip_main:
            path = out/f"summary-{p}.txt"
            s = Summary(resource, p, summary=path.read_text() if path.exists() else None)
            if s.summary is None:
                t0 = time.time(); s.context(model, tok); path.write_text(s.summary); log(f"summary p={p} in {time.time() - t0:.0f}s")
            methods.append(s)
        if not args.skip_main:
            methods.append(CartridgeMethod(cartridge(model, tok, resource, convs, out/f"cartridge-{p}", p, args), name=f"cartridge p={p}"))
    if not args.skip_main:
        t0 = time.time()
        report = evaluate(model, tok, questions, methods, generate=not args.no_generate, max_new_tokens=args.max_new_tokens,
                          batch_size=4, run_dir=out/"eval", progress=False)
        log(f"evaluated {len(methods)} methods in {time.time() - t0:.0f}s; total {time.time() - t_start:.0f}s")
        summarize_report(report, out/"eval")
    if not args.no_ablations:
        p = args.p_ablate
        main = out/f"cartridge-{p}"
        ablations = [NoContext(), CartridgeMethod(cartridge(model, tok, resource, convs, main, p, args), name=f"cartridge p={p} (corpus init, distill, 5 families)")]
        for init in ("random", "text") if "init" in args.ablations else ():
            c = cartridge(model, tok, resource, convs, out/f"ablate-init-{init}-{p}", p, args, init=init)
            ablations.append(CartridgeMethod(c, name=f"init={init} p={p}"))
        if "objective" in args.ablations:
            c = cartridge(model, tok, resource, convs, out/f"ablate-next-token-{p}", p, args, objective="next_token")
            ablations.append(CartridgeMethod(c, name=f"next-token objective p={p}"))
        if "seeds" in args.ablations:
            generic = data(model, tok, resource, out/"data-generic", args.n_convs_generic or args.n_convs, ["generic"], args)
            c = cartridge(model, tok, resource, generic, out/f"ablate-generic-seeds-{p}", p, args)
            ablations.append(CartridgeMethod(c, name=f"generic seeds only p={p}"))
        t0 = time.time()
        report = evaluate(model, tok, questions, ablations, generate=not args.no_generate, max_new_tokens=args.max_new_tokens,
                          batch_size=4, run_dir=out/"eval-ablations", progress=False)
        log(f"evaluated {len(ablations)} ablation methods in {time.time() - t0:.0f}s; total {time.time() - t_start:.0f}s")
        summarize_report(report, out/"eval-ablations", icl=None)

def summarize_report(report, folder, icl="icl"):
    "Add the share of the no-context -> ICL log-ppl gain recovered, write table.csv, print a markdown table."
    none = report.log_ppl[report.method == "no context"].iloc[0]
    if icl is not None:
        report["icl_gain_recovered"] = (none - report.log_ppl) / (none - report.log_ppl[report.method == icl].iloc[0])
    report["kv_MB"] = report.kv_bytes / 2**20
    cols = [c for c in ["method", "p", "kv_MB", "log_ppl", "icl_gain_recovered", "fact_recall", "f1", "chrf", "tok_s", "context_s"] if c in report]
    report[cols].to_csv(Path(folder)/"table.csv", index=False)
    print(markdown_table(report[cols]), flush=True)

def markdown_table(df) -> str:
    "A markdown table (no tabulate dependency)."
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(rows + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)])

if __name__ == "__main__": main()
