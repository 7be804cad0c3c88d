"Cartridge on the real SmolLM2-135M-Instruct: exactness, canaries, gradients, file-format failures."
import json, pickle, warnings
import pytest, torch
from cartridges.models import load_model, tiny_model
from cartridges.cartridge import Cartridge, CartridgeError, prefill_kv, _generation_config
from cartridges.cartridge_use import chat_batch

FACT = ("Internal memo. The secret launch code of Project Bluefin is PELICAN-42. The project lead is Dr. Mirela "
        "Vasquez and the launch is planned for the ninth of March in Reykjavik.")
QUESTIONS = ["What is the secret launch code of Project Bluefin?", "In which city will Project Bluefin launch?"]
N = 16  # new tokens per answer: enough for the facts, small enough for a shared 2-core machine

@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")

@pytest.fixture(scope="module")
def no_context_answer(smol):
    model, tok = smol
    return plain_answer(model, tok, conv(QUESTIONS[0]))

@pytest.fixture(scope="module")
def fact_cartridge(smol):
    model, tok = smol
    p = len(tok(FACT, add_special_tokens=False).input_ids)
    return Cartridge.init(model, tok, p=p, method="text", text=FACT)

def conv(q): return [{"role": "user", "content": q}]

def plain_answer(model, tok, messages, prefix_ids=None, max_new_tokens=N):
    "The plain model's greedy answer, with `prefix_ids` (a text's tokens) before the chat-templated conversation."
    ids = chat_batch(tok, [messages])["input_ids"]
    if prefix_ids is not None: ids = torch.cat([torch.as_tensor(prefix_ids).reshape(1, -1), ids], 1)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         generation_config=_generation_config(model, tok, max_new_tokens, 0.0, 1.0))
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

def test_exactness_text_cartridge_equals_text_in_context(smol, fact_cartridge):
    "A cartridge initialized from text T answers exactly like the plain model with T's tokens before the chat."
    model, tok = smol
    text_ids = fact_cartridge.meta["initializer"]["token_ids"]
    expected = [plain_answer(model, tok, conv(q), text_ids) for q in QUESTIONS]
    got = fact_cartridge.generate(model, tok, [conv(q) for q in QUESTIONS], max_new_tokens=N)  # batched, left-padded
    assert got == expected
    assert "PELICAN" in got[0].upper()

def test_canary_cartridge_changes_the_answer(smol, fact_cartridge, no_context_answer):
    """Fails if the cartridge stops reaching the model (e.g. transformers drops the `past_key_values` shim or
    changes how a prefilled cache is read): the no-context model cannot know the code."""
    model, tok = smol
    with_cartridge = fact_cartridge.generate(model, tok, [conv(QUESTIONS[0])], max_new_tokens=N)[0]
    assert "PELICAN" in with_cartridge.upper() and "PELICAN" not in no_context_answer.upper()
    enc = chat_batch(tok, [conv(QUESTIONS[0])])
    with torch.no_grad():
        h_cart = fact_cartridge.hidden_states(model, enc["input_ids"], enc["attention_mask"])
        h_plain = model.model(**enc).last_hidden_state
    assert (h_cart - h_plain).abs().max() > 1.0

def test_streaming_matches(smol, fact_cartridge):
    model, tok = smol
    pieces = list(fact_cartridge.generate(model, tok, [conv(QUESTIONS[1])], max_new_tokens=8, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces) == fact_cartridge.generate(model, tok, [conv(QUESTIONS[1])], max_new_tokens=8)[0]

def test_upstream_peft_generate_still_ignores_the_cartridge(smol, fact_cartridge, no_context_answer):
    """Documents the upstream bug we work around (peft 0.21.2 + transformers 5.25): `PeftModel.generate` drops the
    cartridge and answers as if there were no context. If this starts failing, upstream changed: re-check."""
    model, tok = smol
    fresh, _ = load_model("smollm2-135m")
    pm = fact_cartridge.to_peft(fresh)
    enc = chat_batch(tok, [conv(QUESTIONS[0])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pm.generate(**enc, generation_config=_generation_config(fresh, tok, N, 0.0, 1.0))
    peft_answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert peft_answer == no_context_answer
    assert "PELICAN" not in peft_answer.upper()
    # while peft's training forward does see the cartridge, exactly like ours:
    with torch.no_grad():
        peft_logits = pm(**enc).logits[:, -1]
        ours = model.get_output_embeddings()(fact_cartridge.hidden_states(model, enc["input_ids"], enc["attention_mask"])[:, -1])
    torch.testing.assert_close(peft_logits, ours, atol=1e-4, rtol=1e-4)

def test_gradient_checkpointing_same_gradients(smol):
    model, tok = smol
    c = Cartridge.init(model, tok, p=16, method="random", seed=3)
    enc = chat_batch(tok, [conv("Hello there, how are you?"), conv("Hi")])  # second row left-padded
    def grads(ckpt):
        c.trainable_kv.grad = None
        h = c.hidden_states(model, enc["input_ids"], enc["attention_mask"], gradient_checkpointing=ckpt)
        logits = model.get_output_embeddings()(h[:, -3:])
        logits.logsumexp(-1).sum().backward()
        return c.trainable_kv.grad.clone()
    g_cache, g_ckpt = grads(False), grads(True)
    assert g_cache.abs().sum() > 0
    torch.testing.assert_close(g_ckpt, g_cache, atol=1e-5, rtol=1e-4)
    assert not model.is_activation_checkpointing and not model.training

def test_corpus_and_summary_initializers(smol):
    model, tok = smol
    class Doc:
        def text(self): return FACT + " " + FACT
    c = Cartridge.init(model, tok, p=20, method="corpus", resource=Doc())
    ids = tok(FACT, add_special_tokens=False, return_tensors="pt").input_ids[0][:20]
    assert torch.equal(c.kv, prefill_kv(model, ids))
    s = Cartridge.init(model, tok, p=24, method="summary", resource=Doc())
    summary = s.meta["initializer"]["summary"]
    assert len(summary) > 10 and s.p == 24
    ids = tok(summary + "\n\n" + FACT + " " + FACT, add_special_tokens=False, return_tensors="pt").input_ids[0][:24]
    assert torch.equal(s.kv, prefill_kv(model, ids))

def test_save_load_roundtrip_without_pickle(smol, fact_cartridge, tmp_path, monkeypatch):
    model, tok = smol
    fact_cartridge.meta["training"] = {"steps": 3, "final_loss": 0.5}
    fact_cartridge.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["model"]["n_layers"] == 30 and meta["model"]["n_kv_heads"] == 3 and meta["tokenizer_hash"]
    assert meta["p"] == fact_cartridge.p and meta["dtype"] == "float32" and meta["training"]["steps"] == 3
    def no_pickle(*a, **k): raise AssertionError("pickle used on load")
    monkeypatch.setattr(pickle, "load", no_pickle); monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    c = Cartridge.load(tmp_path / "c", model=model, tokenizer=tok)
    monkeypatch.undo()
    assert torch.equal(c.frozen_kv, fact_cartridge.frozen_kv) and torch.equal(c.trainable_kv, fact_cartridge.trainable_kv)
    assert c.meta["training"] == {"steps": 3, "final_loss": 0.5} and c.meta["initializer"]["method"] == "text"

def test_wrong_model_or_tokenizer_is_one_clear_error(smol, fact_cartridge, tmp_path):
    model, tok = smol
    fact_cartridge.save(tmp_path / "c")
    tiny, tiny_tok = tiny_model()
    with pytest.raises(CartridgeError, match=r"\(layers, kv_heads, head_dim\)=\(30, 3, 64\)"):
        Cartridge.load(tmp_path / "c", model=tiny)
    other_tok = load_model("smollm2-135m")[1]
    other_tok.add_tokens(["<brand-new-token>"])
    with pytest.raises(CartridgeError, match="different tokenizer"):
        Cartridge.load(tmp_path / "c", model=model, tokenizer=other_tok)
    changed, _ = load_model("smollm2-135m")
    with torch.no_grad(): changed.model.embed_tokens.weight[:4] += 1.0
    with pytest.warns(UserWarning, match="different weights"):
        Cartridge.load(tmp_path / "c", model=changed)

@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "meta.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    (lambda d: (d / "cartridge.safetensors").write_bytes((d / "cartridge.safetensors").read_bytes()[:-64]), "corrupt"),
    (lambda d: (d / "cartridge.safetensors").write_bytes(pickle.dumps({"frozen_kv": 1})), "corrupt"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()),
                                                        "shapes": {"frozen_kv": [1, 2, 3, 4, 5]}})), "but meta.json says"),
    (lambda d: (d / "meta.json").write_text(json.dumps({"format": "something-else"})), "not cartridge metadata"),
])
def test_corrupt_files_are_one_clear_error(tmp_path, damage, message):
    model, tok = tiny_model()
    c = Cartridge.init(model, tok, p=8)
    d = c.save(tmp_path / "c")
    damage(d)
    with pytest.raises(CartridgeError, match=message):
        Cartridge.load(d, model=model)

def test_nan_values_are_refused(tmp_path):
    model, tok = tiny_model()
    c = Cartridge.init(model, tok, p=8)
    with torch.no_grad(): c.trainable_kv[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(CartridgeError, match="NaN"):
        Cartridge.load(c.save(tmp_path / "c"))

def test_composed_cartridge_generates(smol, fact_cartridge):
    """Composition is plain concatenation (paper, peft). The part placed second is read at its positions: its fact
    comes out. (Two *text-initialized* cartridges do not both survive on this 135M model: the answer follows one of
    them; composition is meant for trained cartridges.)"""
    model, tok = smol
    fact2 = "Internal memo. The mascot of Project Bluefin is a green otter named Kofi, chosen by a staff vote."
    b = Cartridge.init(model, tok, p=len(tok(fact2, add_special_tokens=False).input_ids), method="text", text=fact2)
    ab = Cartridge.compose([fact_cartridge, b])
    assert ab.p == fact_cartridge.p + b.p and ab.num_frozen == 1
    answer = ab.generate(model, tok, [conv("What is the name of the mascot of Project Bluefin?")], max_new_tokens=N)[0]
    assert "KOFI" in answer.upper()

def test_tokasaurus_export_loads_with_weights_only(smol, fact_cartridge, tmp_path):
    import yaml
    model, tok = smol
    d = fact_cartridge.export_tokasaurus(tmp_path / "t", model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    data = torch.load(d / "cartridge.pt", weights_only=True)
    assert len(data["trainable_keys"]) == 30 and data["fixed_keys"][0].shape == (1, 3, 1, 64)
    assert data["trainable_values"][0].shape == (1, 3, fact_cartridge.p - 1, 64)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["kv_cache_initializer"]["max_tokens"] == fact_cartridge.p
    assert cfg["model"]["pretrained_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
