"The OpenAI-compatible server against real clients: the `openai` SDK, raw HTTP, a subprocess, and a bounded load test."
import concurrent.futures as cf, http.client, json, os, subprocess, sys, time, urllib.request
from pathlib import Path
import openai, pytest, torch
from openai import OpenAI
from cartridges.cartridge import Cartridge
from cartridges.models import load_model, tiny_model
from cartridges.serve import (BatchEngine, CartridgeStore, cartridge_kv, _compose, GenerationRequest, ServeConfig, create_app, free_port,
                              running_server)

KEY = "test-key-0123456789"
HI = [{"role": "user", "content": "Where did the kite launch?"}]

@pytest.fixture(scope="module")
def tiny():
    "The real SmolLM2 (loads in about a second): the tiny random model's greedy answers are all alike."
    return load_model("smollm2-135m")

@pytest.fixture(scope="module")
def cart_dir(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("serve")
    model, tok = tiny
    carts = root/"carts"
    for name, text in [("kite", "The kite launched from Brighton beach at dawn on 3 May."),
                       ("team/rocket", "Our rocket team is called the Red Falcons.")]:
        p = len(tok(text, add_special_tokens=False).input_ids)
        Cartridge.init(model, tok, p=p, method="text", text=text).save(carts/name)
    Cartridge.init(model, tok, p=3, seed=9).save(root/"outside")
    (carts/"escape").symlink_to(root/"outside")
    return carts

@pytest.fixture(scope="module")
def server(tiny, cart_dir):
    model, tok = tiny
    app = create_app(model, tok, cart_dir, api_key=KEY,
                     config=ServeConfig(model_name="smollm2-135m", max_tokens=64, max_body_bytes=20_000, max_cartridges=2))
    with running_server(app) as url: yield url, app

@pytest.fixture
def client(server):
    return OpenAI(base_url=server[0], api_key=KEY, max_retries=0, timeout=60)

def ask(client, carts=None, **kw):
    kw = {"model": "smollm2-135m", "messages": HI, "max_tokens": 8, "temperature": 0, **kw}
    return client.chat.completions.create(**kw, extra_body={"cartridges": carts} if carts is not None else None)

def test_models_and_cartridges_listed(client, server):
    assert [m.id for m in client.models.list()] == ["smollm2-135m"]
    req = urllib.request.Request(server[0] + "/cartridges", headers={"Authorization": f"Bearer {KEY}"})
    ids = [c["id"] for c in json.load(urllib.request.urlopen(req))["data"]]
    assert ids == ["kite", "team/rocket"]  # the link out of the folder is not listed

def test_completion_stream_and_usage(client):
    r = ask(client, [{"id": "kite", "source": "local"}])
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
    chunks = list(ask(client, [{"id": "kite", "source": "local"}], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason

def test_cartridge_changes_the_answer_and_composes(client, tiny):
    model, tok = tiny
    plain, kite = ask(client, max_tokens=12), ask(client, [{"id": "kite"}], max_tokens=12)
    both = ask(client, [{"id": "kite"}, {"id": "team/rocket"}], max_tokens=12)
    assert len({plain.choices[0].message.content, kite.choices[0].message.content, both.choices[0].message.content}) >= 2

def test_server_matches_cartridge_generate(client, tiny, cart_dir):
    model, tok = tiny
    for carts in (["kite"], ["kite", "team/rocket"]):
        loaded = [Cartridge.load(cart_dir/c, model=model) for c in carts]
        c = loaded[0] if len(loaded) == 1 else _compose(loaded)
        want = c.generate(model, tok, [HI], max_new_tokens=10)[0]
        got = ask(client, [{"id": x} for x in carts], max_tokens=10).choices[0].message.content
        assert got == want, (carts, got, want)

@pytest.mark.parametrize("carts,status,words", [
    ([{"id": "../outside"}], 400, "relative path"),
    ([{"id": "/etc"}], 400, "relative path"),
    ([{"id": "kite/../../outside"}], 400, "relative path"),
    ([{"id": "escape"}], 403, "outside"),
    ([{"id": "nope"}], 404, "no cartridge"),
    ([{"id": "kite", "source": "huggingface"}], 400, "disabled"),
    ([{"id": "kite", "source": "ftp"}], 400, "source"),
    ([{"id": "kite"}] * 3, 400, "at most 2 cartridges"),
    (["kite"], 400, "must be an object"),
])
def test_bad_cartridges_are_clear_errors(client, carts, status, words):
    with pytest.raises(openai.APIStatusError) as e: ask(client, carts)
    assert e.value.status_code == status and words in e.value.message, e.value.message

def test_caps_and_fields(client):
    cases = [(dict(max_tokens=65), 400, "max_tokens"), (dict(model="gpt-4"), 404, "not served"),
             (dict(temperature=5), 400, "temperature"), (dict(messages=[{"role": "robot", "content": "x"}]), 400, "role"),
             (dict(n=2), 400, "`n`"), (dict(messages=[{"role": "user", "content": "x" * 30_000}]), 413, "bytes")]
    for kw, status, words in cases:
        with pytest.raises(openai.APIStatusError) as e: ask(client, **kw)
        assert e.value.status_code == status and words in e.value.message, (kw, e.value.message)

def test_auth(server):
    for key in ("wrong-key-xxxxxxxx", ""):
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=server[0], api_key=key or "x", max_retries=0).models.list()
    conn = http.client.HTTPConnection(*server[0].split("//")[1].split("/")[0].split(":"))
    conn.request("GET", "/v1/models"); r = conn.getresponse()
    assert r.status == 401 and json.loads(r.read())["error"]["code"] == "invalid_api_key"

def test_raw_http_errors(server):
    host, port = server[0].split("//")[1].split("/")[0].split(":")
    def post(body:bytes, headers=None):
        conn = http.client.HTTPConnection(host, int(port))
        conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}", **(headers or {})})
        r = conn.getresponse(); return r.status, json.loads(r.read())
    assert post(b"{not json")[0] == 400
    assert post(b"[1, 2]")[1]["error"]["message"] == "the request body must be a JSON object"
    status, err = post(b"x" * 30_000)
    assert status == 413 and err["error"]["code"] == "body_too_large"

def test_stream_disconnect_cancels(server, client):
    engine = server[1].state.engine
    stream = ask(client, max_tokens=64, stream=True, temperature=1.0, seed=0)
    next(iter(stream)); next(iter(stream))
    stream.close()
    t0 = time.time()
    while engine._rows and time.time() - t0 < 10: time.sleep(0.05)
    assert not engine._rows

def test_load_64_requests_16_concurrent(client, server):
    "Every one of 64 requests (16 at a time) gets its answer, and the answers do not depend on the batching."
    prompts = [f"Tell me fact number {i} about kites." for i in range(4)]
    variants = [(p, c) for p in prompts for c in ("kite", None)]  # with and without a cartridge, in one batch
    carts = lambda c: [{"id": c}] if c else []
    solo = {(p, c): ask(client, carts(c), messages=[{"role": "user", "content": p}], max_tokens=12).choices[0].message.content
            for p, c in variants}
    engine = server[1].state.engine
    def one(i):
        p, c = variants[i % len(variants)]
        return (p, c), ask(client, carts(c), messages=[{"role": "user", "content": p}], max_tokens=12)
    with cf.ThreadPoolExecutor(16) as pool: results = list(pool.map(one, range(64)))
    assert len(results) == 64
    for p, r in results: assert r.choices[0].message.content == solo[p]
    assert engine.stats["max_batch_seen"] > 1  # requests really were decoded together

def test_real_model_batched_equals_alone():
    "SmolLM2: greedy answers with different cartridges, decoded together, equal those decoded alone and Cartridge.generate."
    model, tok = load_model("smollm2-135m")
    texts = ["The kite launched from Brighton beach at dawn on 3 May.", "Our team is called the Red Falcons."]
    carts = [Cartridge.init(model, tok, p=len(tok(t, add_special_tokens=False).input_ids), method="text", text=t) for t in texts]
    store_kv = [cartridge_kv(c, model.dtype) for c in carts]
    questions = ["Where did the kite launch?", "What is the team called?", "Say hello."]
    jobs = [(store_kv[0], questions[0]), (store_kv[1], questions[1]), (None, questions[2]), (store_kv[0], questions[2])]
    ids = lambda q: tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False)
    engine = BatchEngine(model, tok).start()
    try:
        alone = [engine.generate(GenerationRequest(ids(q), kv, max_tokens=16)).tokens for kv, q in jobs]
        together = [engine.submit(GenerationRequest(ids(q), kv, max_tokens=16)) for kv, q in jobs]
        for r in together: assert r.done.wait(120)
    finally: engine.stop()
    assert [r.tokens for r in together] == alone
    ref = carts[0].generate(model, tok, [[{"role": "user", "content": questions[0]}]], max_new_tokens=16)[0]
    assert tok.decode(alone[0], skip_special_tokens=True) == ref

def test_serve_refuses_unsafe_settings(tmp_path, monkeypatch):
    "Checked before the model is loaded: no key on a public address, or no key without --no-auth."
    from cartridges.serve import serve
    monkeypatch.delenv("CARTRIDGES_API_KEY", raising=False)
    with pytest.raises(ValueError, match="loopback"): serve(cartridge_dir=tmp_path, host="0.0.0.0", no_auth=True)
    with pytest.raises(ValueError, match="API key is required"): serve(cartridge_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"): serve(cartridge_dir=tmp_path/"nope", no_auth=True)

def test_serve_subprocess_real_model(tmp_path):
    "`serve()` in its own process with the real model, no auth on loopback, one cartridge request, then stopped."
    model, tok = load_model("smollm2-135m")
    Cartridge.init(model, tok, p=10, method="text", text="The kite launched from Brighton beach at dawn.").save(tmp_path/"kite")
    port = free_port()
    code = f"from cartridges.serve import serve; serve(cartridge_dir={str(tmp_path)!r}, port={port}, no_auth=True, log_level='warning')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        t0 = time.time()
        while True:
            try: client.models.list(); break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.time() - t0 < 120, proc.stdout.read() if proc.poll() is not None else "timeout"
                time.sleep(0.3)
        r = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Where did the kite launch?"}],
                                           max_tokens=12, temperature=0, extra_body={"cartridges": [{"id": "kite"}]})
        assert r.choices[0].message.content and r.usage.completion_tokens > 0
    finally:
        proc.terminate(); proc.wait(30)
