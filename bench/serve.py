"""Serving benchmark: a cartridge (p=512) vs the whole kite-launch corpus in context, through our server (and vLLM).

For each method and concurrency level, `concurrency` streamed requests are sent at once (one question each from the
kite-launch case, greedy, `ignore_eos` so every answer has exactly `--max-tokens` tokens) and we record:

- decode tok/s: generated tokens after each request's first one, over the time from the first "first token" to the
  last token (prefill excluded: that is what the KV cache size changes most);
- end-to-end tok/s: all generated tokens over the wall time, prefill included;
- time to first token (median);
- KV bytes per request: (prefix + prompt + answer tokens) x bytes per token, and the largest batched cache the engine
  actually held (padding included).

Methods: `cartridge` (the request names the cartridge; its KV is copied in, never prefilled), `icl` (the corpus as the
system message, prefilled per request: our engine has no prefix cache), and `vllm-icl` (vLLM-CPU serving the same ICL
prompt with prefix caching on), when the vLLM venv exists (`~/.cache/cartridges/vllm-venv`, or $CARTRIDGES_VLLM_VENV).

    python bench/serve.py                          # full: p=512, 64 tokens, concurrency 1 and 16
    python bench/serve.py --max-tokens 32 --skip-vllm   # reduced

Results go to `bench/results/serve.json` and a markdown table is printed (paste it into BENCHMARKS.md).
The cartridge is initialized from the first 512 corpus tokens and not trained: throughput does not depend on training.
"""
import argparse, concurrent.futures as cf, json, os, signal, subprocess, tempfile, time, urllib.request
from pathlib import Path
import torch
from openai import OpenAI

VENV = Path(os.environ.get("CARTRIDGES_VLLM_VENV", Path.home()/".cache/cartridges/vllm-venv"))

def one_request(client, model_name, messages, max_tokens, extra):
    t0 = time.perf_counter(); first = None; times = []
    stream = client.chat.completions.create(model=model_name, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True, **extra})
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
            if first is None: first = times[0]
        if chunk.usage: usage = chunk.usage
    end = time.perf_counter()
    return dict(start=t0, first=first or end, end=end, times=times, completion_tokens=usage.completion_tokens,
                prompt_tokens=usage.prompt_tokens)

def run_level(client, model_name, questions, concurrency, max_tokens, make_messages, extra):
    msgs = [make_messages(questions[i % len(questions)]) for i in range(concurrency)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        rs = list(pool.map(lambda m: one_request(client, model_name, m, max_tokens, extra), msgs))
    wall = time.perf_counter() - t0
    decode_tokens = sum(r["completion_tokens"] - 1 for r in rs)
    decode_s = max(r["end"] for r in rs) - min(r["first"] for r in rs)
    ttft = sorted(r["first"] - r["start"] for r in rs)[len(rs)//2]
    # steady state: text chunks (about one per token) streamed once EVERY request is past its prefill
    all_in = max(r["first"] for r in rs); last = max(r["end"] for r in rs)
    steady = sum(t > all_in for r in rs for t in r["times"]) / (last - all_in) if last > all_in else float("nan")
    return dict(concurrency=concurrency, requests=len(rs), tokens=sum(r["completion_tokens"] for r in rs),
                decode_tok_s=decode_tokens / decode_s if decode_s > 0 else float("nan"), steady_decode_tok_s=steady,
                e2e_tok_s=sum(r["completion_tokens"] for r in rs) / wall, ttft_s=ttft, wall_s=wall,
                prompt_tokens=rs[0]["prompt_tokens"])

def start_vllm(model_path, port, log):
    cmd = [str(VENV/"bin/python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path), "--dtype", "float32",
           "--max-model-len", "8192", "--enable-prefix-caching", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"vLLM exited:\n{Path(log).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                if r.status == 200: return proc
        except OSError: time.sleep(3)
    stop_vllm(proc); raise RuntimeError("vLLM did not start in 900 s")

def stop_vllm(proc):
    try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try: os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--methods", nargs="+", default=["cartridge", "vllm-icl", "icl"])  # our ICL last: it is the slowest
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent/"results/serve.json"))
    args = ap.parse_args()

    from cartridges.cartridge import Cartridge
    from cartridges.eval import load_dossier
    from cartridges.models import load_model, default_model_path
    from cartridges.serve import ServeConfig, create_app, free_port, running_server
    model, tok = load_model("smollm2-135m")
    resource, questions_df = load_dossier("kite-launch")
    corpus = resource if isinstance(resource, str) else resource.text()
    questions = [q for q in questions_df["question"].tolist()][:16]
    n_corpus = len(tok(corpus, add_special_tokens=False).input_ids)
    cfg = model.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * torch.finfo(model.dtype).bits // 8
    print(f"corpus: {n_corpus} tokens; KV per token {kv_per_token} B; questions: {len(questions)}", flush=True)

    results, tmp = [], Path(tempfile.mkdtemp())
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    def record(r):  # written after every level, so a run cut short still leaves its numbers
        print(json.dumps(r), flush=True); results.append(r)
        out.write_text(json.dumps(dict(args=vars(args), corpus_tokens=n_corpus, kv_per_token=kv_per_token,
                                       torch_threads=torch.get_num_threads(), results=results), indent=1))
    Cartridge.init(model, tok, p=args.p, method="text", text=corpus).save(tmp/"kite")
    user = lambda q: [{"role": "user", "content": q}]
    icl = lambda q: [{"role": "system", "content": corpus}, {"role": "user", "content": q}]
    plans = {"cartridge": (user, {"cartridges": [{"id": "kite", "source": "local"}]}, args.p), "icl": (icl, {}, 0)}
    app = create_app(model, tok, tmp, no_auth=True, config=ServeConfig(max_tokens=args.max_tokens, max_batch=16))
    engine = app.state.engine
    with running_server(app) as url:
        client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
        for method in args.methods:
            if method == "vllm-icl":
                if args.skip_vllm or not (VENV/"bin/python").exists(): print("vLLM skipped (no venv or --skip-vllm)"); continue
                port = free_port(); proc = start_vllm(default_model_path(), port, tmp/"vllm.log")
                try:
                    vclient = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600)
                    name = vclient.models.list().data[0].id
                    one_request(vclient, name, icl(questions[0]), 4, {})  # warm-up: fills the prefix cache
                    for c in args.concurrency:
                        r = run_level(vclient, name, questions, c, args.max_tokens, icl, {})
                        record(dict(r, method="icl", server="vllm", kv_bytes_per_request=(r["prompt_tokens"] + args.max_tokens) * kv_per_token))
                finally: stop_vllm(proc)
                continue
            make, extra, prefix = plans[method]
            one_request(client, "smollm2-135m", make(questions[0]), 4, extra)  # warm-up
            for c in args.concurrency:
                engine.stats.clear()
                r = run_level(client, "smollm2-135m", questions, c, args.max_tokens, make, extra)
                record(dict(r, method=method, server="ours", kv_bytes_per_request=(prefix + r["prompt_tokens"] + args.max_tokens) * kv_per_token,
                            engine_max_kv_bytes=engine.stats["max_kv_bytes"], max_batch_seen=engine.stats["max_batch_seen"]))

    print("\n| server | method | concurrency | decode tok/s | end-to-end tok/s | TTFT s (median) | KV MiB / request |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['server']} | {r['method']} | {r['concurrency']} | {r['decode_tok_s']:.1f} | {r['e2e_tok_s']:.1f} | "
              f"{r['ttft_s']:.2f} | {r['kv_bytes_per_request']/2**20:.1f} |")

if __name__ == "__main__":
    main()
