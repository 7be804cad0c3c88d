"""Teacher throughput for self-study: HFClient at several batch sizes, with and without shared-prefix reuse, and a
vLLM CPU server on the same model and the same requests (when its venv is installed).

Why: self-study cost is dominated by the teacher. Conversations about the same chunk share a long prompt prefix
(the chunk goes first in the system prompt): HFClient prefills it once per group and copies the KV to the rows;
vLLM's prefix cache does the same across requests. This script measures generated tokens per second for each.

Workload: `n_chunks` distinct chunks of ~`chunk_tokens` tokens (real text: this repository's notebooks and docs),
`batch // n_chunks` questions each, greedy, `max_tokens` new tokens, top-20 kept. Each configuration gets fresh
chunk texts (a unique header) so no cache carries over between configurations. Medians over `--reps`.

    python bench/synthesis.py                                  # full: batch 1/8/32, 512-token chunks, 64 new tokens
    python bench/synthesis.py --batches 1,8 --max-tokens 32    # reduced
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

QUESTIONS = ["What is the main point of this text?", "Summarize the excerpt in three sentences.",
             "Which names appear in the excerpt, and what do they do?", "Explain the hardest part of this excerpt.",
             "Write one precise question about a fact in the excerpt.", "What should a newcomer read first here?",
             "Turn the excerpt into a short bulleted list.", "How would you use what this describes in practice?"]

def corpus_text() -> str:
    root = Path(__file__).resolve().parents[1]
    parts = [p.read_text(errors="replace") for p in sorted((root / "shared").glob("*.md")) + [root / "README.md"] if p.exists()]
    return "\n\n".join(parts) or ("Cartridges are small trained KV caches that stand in for a corpus. " * 400)

def make_conversations(tok, text, batch, n_chunks, chunk_tokens, tag):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    convs = []
    for c in range(n_chunks):
        start = (c * 997 * chunk_tokens // 4) % max(1, len(ids) - chunk_tokens)
        chunk = f"[{tag}-{c}]\n" + tok.decode(ids[start:start + chunk_tokens])
        system = f"{chunk}\n\n---\nAbove is an excerpt from a document. Answer the user's messages about it accurately."
        per = batch // n_chunks + (1 if c < batch % n_chunks else 0)
        convs += [[{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[(c + q) % len(QUESTIONS)]}] for q in range(per)]
    return convs

def timed(client, convs, max_tokens):
    t = time.perf_counter()
    out = client.chat(convs, temperature=0.0, max_tokens=max_tokens, top_logprobs=20)
    dt = time.perf_counter() - t
    return sum(s.n_tokens for s in out), dt

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def start_vllm(python, model_path, log_path, startup_s=900):
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path), "--dtype", "float32",
           "--max-model-len", "4096", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + startup_s
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5): return proc, f"http://127.0.0.1:{port}/v1"
        except OSError: time.sleep(2)
    stop(proc); raise RuntimeError(f"vLLM did not start; see {log_path}")

def stop(proc):
    try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(30)
    except ProcessLookupError: pass
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,32"); ap.add_argument("--convs-per-chunk", type=int, default=8)
    ap.add_argument("--chunk-tokens", type=int, default=512); ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1); ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--clients", default="hf+prefix,hf,vllm"); ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="bench/synthesis_results.json")
    args = ap.parse_args()
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    from cartridges.models import load_model, default_model_path
    from cartridges.clients import HFClient, OpenAIClient
    model, tok = load_model()
    load_start = os.getloadavg()
    text, batches, rows = corpus_text(), [int(b) for b in args.batches.split(",")], []
    vllm_python = Path(os.environ.get("CARTRIDGES_VLLM_VENV", Path.home() / ".cache/cartridges/vllm-venv")) / "bin/python"
    clients = {"hf+prefix": HFClient(model, tok, batch_size=max(batches)), "hf": HFClient(model, tok, batch_size=max(batches), prefix_reuse=False)}
    proc = None
    try:
        for name in args.clients.split(","):
            if name == "vllm":  # started only now, so an idle server does not slow the in-process runs
                if args.no_vllm or not vllm_python.exists(): break
                print("starting vLLM ...", flush=True); t = time.time()
                proc, url = start_vllm(str(vllm_python), default_model_path(), "/tmp/bench_synthesis_vllm.log")
                print(f"vLLM ready in {time.time() - t:.0f} s", flush=True)
                clients["vllm"] = OpenAIClient(url, tokenizer=tok, concurrency=max(batches))
            client = clients[name]
            timed(client, make_conversations(tok, text, 1, 1, 64, f"warm-{name}"), 4)  # warm-up
            for b in batches:
                runs = []
                for r in range(args.reps):
                    convs = make_conversations(tok, text, b, max(1, b // args.convs_per_chunk), args.chunk_tokens, f"{name}-{b}-{r}")
                    if name == "vllm": client.concurrency = b
                    runs.append(timed(client, convs, args.max_tokens))
                tokens, secs = zip(*runs)
                row = {"client": name, "batch": b, "chunks": max(1, b // args.convs_per_chunk), "tokens": int(statistics.median(tokens)),
                       "seconds": round(statistics.median(secs), 2), "tokens_per_s": round(statistics.median(t / s for t, s in runs), 1)}
                rows.append(row); print(json.dumps(row), flush=True)
    finally:
        if proc is not None: stop(proc)
    meta = {"chunk_tokens": args.chunk_tokens, "max_tokens": args.max_tokens, "convs_per_chunk": args.convs_per_chunk,
            "reps": args.reps, "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| client | batch | chunks | tokens | seconds | tokens/s |\n|---|---|---|---|---|---|")
    for r in rows: print(f"| {r['client']} | {r['batch']} | {r['chunks']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} |")
    print(meta)

if __name__ == "__main__":
    main()
