"""A real vLLM server (CPU build, its own venv from .ci/install_vllm) as the self-study teacher.

Starts `vllm.entrypoints.openai.api_server` on 127.0.0.1 (a free port) on the default model in float32, synthesizes
conversations through `OpenAIClient`, and checks the ids and top-20 it returns against the same model in process.
The server is always stopped at the end. Skipped only when the vLLM venv is not installed.
"""
import os, signal, socket, subprocess, time, urllib.request
from pathlib import Path
import numpy as np, pytest, torch

VENV = Path(os.environ.get("CARTRIDGES_VLLM_VENV", Path.home() / ".cache/cartridges/vllm-venv"))
PYTHON = VENV / "bin/python"
pytestmark = pytest.mark.skipif(not PYTHON.exists(), reason=f"vLLM venv not installed at {VENV} (run .ci/install_vllm)")
STARTUP_S = int(os.environ.get("CARTRIDGES_VLLM_STARTUP_S", 900))

def _die_with_parent():
    "In the server process: get SIGTERM when the test process dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception: pass

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cartridges.models import default_model_path
    port, log = _free_port(), tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(default_model_path()),
           "--dtype", "float32", "--max-model-len", "4096", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if proc.poll() is not None: pytest.fail(f"vLLM exited with {proc.returncode} during start-up:\n{log.read_text()[-3000:]}")
            if time.time() > deadline: pytest.fail(f"vLLM not ready after {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                    if r.status == 200: break
            except OSError: pass
            time.sleep(2)
        yield url + "/v1"
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait()

@pytest.fixture(scope="module")
def model_tok():
    from cartridges.models import load_model
    return load_model()

def _forward_topk(model, prompt_ids, reply_ids, k):
    "The model's raw top-k at every reply position, from one forward pass over prompt + reply."
    ids = torch.tensor([list(prompt_ids) + list(reply_ids)])
    with torch.no_grad(): lp = torch.log_softmax(model(ids).logits[0, len(prompt_ids) - 1:-1].float(), -1)
    v, i = lp.topk(k, -1)
    return i.numpy(), v.numpy()

def _check_against_hf(model, prompt_ids, sample_ids, topk_ids, topk_logprobs, k=20):
    ref_ids, ref_lps = _forward_topk(model, prompt_ids, sample_ids, k)
    assert np.array_equal(topk_ids[:, 0], ref_ids[:, 0]), "top-1 differs between vLLM and transformers"
    # compare log-probabilities of the same token ids (order can swap on near-ties)
    for t in range(len(sample_ids)):
        ref = dict(zip(ref_ids[t].tolist(), ref_lps[t].tolist()))
        common = [j for j, tid in enumerate(topk_ids[t].tolist()) if tid in ref]
        assert len(common) >= k - 2
        assert max(abs(topk_logprobs[t, j] - ref[topk_ids[t, j]]) for j in common) < 2e-3

def test_synthesis_through_vllm_matches_transformers(server, model_tok, tmp_path):
    from cartridges.clients import OpenAIClient, HFClient, chat_prompt_ids
    from cartridges.resources import TextResource
    from cartridges.synthesis import SelfStudy, synthesize
    from cartridges.core import conversations_from_df
    model, tok = model_tok
    client = OpenAIClient(server, tokenizer=tok, concurrency=8)  # probes model and tokenizer
    text = ("## Delta\nThe Delta kite has a span of 180 cm and flies in winds of 8 to 20 km/h. It was designed in 1998 "
            "by the Lisbon kite club.\n\n## Sled\nThe Sled kite has no spars, spans 90 cm, and needs 5 to 17 km/h of wind.")
    resource = TextResource(text, name="kites", chunker="token", min_tokens=16, max_tokens=128)
    ss = SelfStudy(client, resource, max_tokens_a=32, max_tokens_b=32, max_rounds=2, convs_per_chunk=2)
    df = synthesize(ss, n=4, out_dir=tmp_path / "run", batch_size=4, progress=False)
    assert len(df) == 4 and df.attrs["failures"] == []
    convs = conversations_from_df(df)
    # the in-process teacher, batched with shared-prefix reuse, gives the same first answers (float32 on both sides)
    first = [[{"role": "system", "content": c.system_prompt}, c.messages[0].to_dict()] for c in convs]
    for local, c in zip(HFClient(model, tok).chat(first, max_tokens=32, top_logprobs=20), convs):
        m = c.messages[1]
        assert np.array_equal(local.token_ids, m.token_ids) and local.finish_reason == ("stop" if m.token_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") else "length")
        assert np.abs(local.topk_logprobs[:, 0] - m.topk_logprobs[:, 0]).max() < 2e-3
    # every teacher turn (both rounds): ids and top-20 agree with a forward pass of the same model
    for conv in convs:
        assert conv.system_prompt.startswith(conv.chunk)
        for t, m in enumerate(conv.messages):
            if m.role != "assistant": continue
            assert m.topk_ids.shape == (m.n_tokens, 20) and (np.diff(m.topk_logprobs, axis=1) <= 0).all()
            history = [{"role": "system", "content": conv.system_prompt}] + [x.to_dict() for x in conv.messages[:t]]
            prompt = chat_prompt_ids(tok, history)
            _check_against_hf(model, prompt, m.token_ids, m.topk_ids, m.topk_logprobs)
            if m.n_tokens < 32: assert m.token_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")

def test_sampled_replies_keep_raw_exact_top20(server, model_tok):
    "At temperature > 0 the sampled token may be outside the top 20; the top 20 stay the raw, untempered ones."
    from cartridges.clients import OpenAIClient, chat_prompt_ids
    model, tok = model_tok
    client = OpenAIClient(server, tokenizer=tok)
    conv = [{"role": "user", "content": "Write one odd sentence about kites."}]
    s = client.chat([conv] * 3, temperature=1.5, max_tokens=24, top_logprobs=20)
    for x in s: _check_against_hf(model, chat_prompt_ids(tok, conv), x.token_ids, x.topk_ids, x.topk_logprobs)
    assert any(not np.array_equal(x.topk_ids[:, 0], x.token_ids) for x in s)  # sampling did leave the top-1

def test_round_robin_retries_past_a_dead_server(server, model_tok):
    from cartridges.clients import OpenAIClient
    _, tok = model_tok
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    client = OpenAIClient([dead, server], tokenizer=tok, probe=False, max_retries=2, backoff=0.01, timeout=30)
    out = client.chat([[{"role": "user", "content": f"Say {w}."}] for w in ("yes", "no", "maybe")], max_tokens=4)
    assert all(x.n_tokens > 0 for x in out)

def test_probe_rejects_a_different_tokenizer(server, model_tok):
    from cartridges.clients import OpenAIClient, ServerError
    import copy
    _, tok = model_tok
    other = copy.deepcopy(tok); other.add_tokens(["kites"])
    with pytest.raises(ServerError, match="disagrees with the local tokenizer"):
        OpenAIClient(server, tokenizer=other)
