"""Chunking speed and chunk statistics of the three chunkers on a real corpus (this repository by default).

Why: chunking runs once per run before self-study, so it must stay a small fraction of synthesis time even for a
large repository; and the chunk-size distribution decides how much context the teacher sees per conversation.

    python bench/resources.py [--path DIR] [--max-tokens 512] [--repeats 3] [--json out.json]
"""
import argparse, json, statistics, time, warnings
from pathlib import Path
from cartridges.models import default_tokenizer
from cartridges.resources import DirectoryResource

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tok = default_tokenizer()
    rows = []
    for chunker in ("structure", "token", "char"):
        times = []
        for _ in range(a.repeats):
            r = DirectoryResource(a.path, chunker=chunker, max_tokens=a.max_tokens)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter(); chunks = r.chunks(tok); times.append(time.perf_counter() - t)
        n = sorted(c.n_tokens for c in chunks)
        rows.append({"chunker": chunker, "files": len(r.units()), "chunks": len(chunks), "tokens": sum(n),
                     "median_s": round(statistics.median(times), 2), "tokens_per_s": int(sum(n) / statistics.median(times)),
                     "min": n[0], "p10": n[len(n) // 10], "median": n[len(n) // 2], "max": n[-1],
                     "over_token_budget": sum(x > a.max_tokens for x in n)})
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows: print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1))

if __name__ == "__main__": main()
