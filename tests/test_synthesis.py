"Self-study runs that survive: a run killed mid-way resumes with exact accounting; the real model as teacher."
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np, pytest
from cartridges.core import load_conversations

RECIPE = textwrap.dedent("""
    import sys
    from cartridges.models import tiny_model
    from cartridges.clients import HFClient
    from cartridges.resources import TextResource
    from cartridges.synthesis import SelfStudy, synthesize
    model, tok = tiny_model()
    text = "\\n\\n".join(f"## Part {i}\\nPart {i} says the value of item {i} is {i * 7} units, checked in {1990 + i}. " * 4 for i in range(12))
    resource = TextResource(text, name="parts", chunker="token", min_tokens=32, max_tokens=96)
    ss = SelfStudy(HFClient(model, tok), resource, max_tokens_a=6, max_tokens_b=12, top_logprobs=4, max_rounds=2, seed=5)
""")

def _run_in_subprocess(out_dir, n, batch_size):
    code = RECIPE + f"synthesize(ss, n={n}, out_dir={str(out_dir)!r}, batch_size={batch_size}, progress=False)\n"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

def _shards(out_dir): return sorted(Path(out_dir).glob("shard-*.parquet"))

def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    out, n, bs = tmp_path / "run", 32, 4
    proc = _run_in_subprocess(out, n, bs)
    try:
        deadline = time.time() + 300
        while len(_shards(out)) < 3:
            assert proc.poll() is None, f"synthesis subprocess exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no shard written in 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = load_conversations(out)
    assert 0 < len(before) < n, f"the run was not interrupted mid-way ({len(before)} of {n} written)"
    assert len(before) % bs == 0  # only whole batches are ever visible
    files_before = {f.name: f.stat().st_mtime_ns for f in _shards(out)}

    ns = {}
    exec(RECIPE, ns)
    df = ns["synthesize"](ns["ss"], n=n, out_dir=out, batch_size=bs, progress=False)
    assert len(df) == n and df["id"].is_unique
    assert sorted(m["index"] for m in df["metadata"]) == list(range(n))
    assert set(before["id"]) <= set(df["id"])  # nothing written before the kill was lost or rewritten
    assert all(files_before[f] == (out / f).stat().st_mtime_ns for f in files_before)
    info = json.loads((out / "synthesis.json").read_text())
    assert info["resumed_with"] == len(before) and info["n_in_out_dir"] == n and info["failed_batches"] == []
    assert not list(out.glob(".shard-*"))  # temp files of the killed write are gone
    # the resumed conversations follow the same plan an uninterrupted run would have
    for meta, seed_type in zip(df["metadata"], df["seed_type"]):
        plan = ns["ss"].plan(meta["index"])
        assert (plan["seed_type"], plan["chunk_index"]) == (seed_type, meta["chunk_index"])
    # every teacher turn of every (two-round) conversation kept its top-k
    for msgs in df["messages"]:
        assert [m.role for m in msgs] == ["user", "assistant"] * 2
        assert all(m.topk_ids.shape == (m.n_tokens, 4) for m in msgs if m.role == "assistant")

def test_concurrent_batches_and_rerun(tmp_path):
    ns = {}
    exec(RECIPE, ns)
    df = ns["synthesize"](ns["ss"], n=10, out_dir=tmp_path, batch_size=3, concurrency=2, progress=False)
    assert len(df) == 10 and df["id"].is_unique
    from cartridges.synthesis import existing_ranges
    assert existing_ranges(tmp_path) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    again = ns["synthesize"](ns["ss"], n=10, out_dir=tmp_path, batch_size=5, progress=False)  # nothing to do, any batch size
    assert set(again["id"]) == set(df["id"])

def test_real_teacher_conversation():
    "SmolLM2 as the teacher: greedy answers are the top-1, ids decode to the text, the chunk is in the system prompt."
    from cartridges.models import load_model
    from cartridges.clients import HFClient
    from cartridges.resources import TextResource
    from cartridges.synthesis import SelfStudy
    model, tok = load_model()
    text = ("The Delta kite has a span of 180 cm and flies in winds of 8 to 20 km/h. It was designed in 1998 by "
            "the Lisbon kite club, who tested it on the beach of Carcavelos over one windy summer.")
    ss = SelfStudy(HFClient(model, tok), TextResource(text, name="kites", chunker="token", min_tokens=8, max_tokens=96),
                   max_tokens_a=24, max_tokens_b=24, top_logprobs=20)
    convs = ss.generate([0, 1])
    for c in convs:
        assert c.system_prompt.startswith(c.chunk) and "Delta" in c.chunk
        a = c.messages[1]
        assert a.role == "assistant" and a.n_tokens > 0 and a.topk_ids.shape == (a.n_tokens, 20)
        assert np.array_equal(a.topk_ids[:, 0], a.token_ids)
        assert tok.decode(a.token_ids, skip_special_tokens=True) == a.content
        assert (np.diff(a.topk_logprobs, axis=1) <= 0).all()
        assert not any(m.role == "system" for m in c.messages)
