"Trainer: resume after a real kill, DDP under torchrun vs one process, bf16 models, the next-token objective."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from cartridges.core import Conversation, Message, save_conversations
from cartridges.models import tiny_model
from cartridges.trainer import TrainConfig, train, read_metrics, corpus_examples, build_examples

ROOT = Path(__file__).resolve().parents[1]

def teacher_turn(model, tok, chat, system, max_new_tokens=8, k=8):
    "The teacher's greedy reply with `system` in context, with its top-k log-probabilities."
    prompt = tok.apply_chat_template([{"role": "system", "content": system}, *chat], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    ids = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)[0, prompt.shape[1]:]
    with torch.no_grad(): logits = model(torch.cat([prompt[0], ids])[None]).logits[0, prompt.shape[1] - 1:-1]
    lp = torch.log_softmax(logits.float(), -1).topk(k)
    return Message("assistant", tok.decode(ids, skip_special_tokens=True), ids.numpy(), lp.indices.numpy(), lp.values.numpy())

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    "Ten tiny-model conversations about a chunk, saved as a parquet shard."
    model, tok = tiny_model()
    chunk = "The Kite-7 launch window opens on March 3 at 06:10 UTC from pad 2."
    system = f"Answer about this document:\n{chunk}"
    qs = ["When?", "Where is the pad?", "What is launched?", "At what time?", "Who decides?"]
    convs = [Conversation([Message("user", q), teacher_turn(model, tok, [{"role": "user", "content": q}], system, n)],
                          chunk=chunk, system_prompt=system, id=f"c{i}-{n}")
             for n in (5, 9) for i, q in enumerate(qs)]
    d = tmp_path_factory.mktemp("data")
    save_conversations(convs, d/"shard-0.parquet")
    return d

SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from cartridges.models import tiny_model
    from cartridges.cartridge import Cartridge
    from cartridges.trainer import TrainConfig, train, Callback
    class Kill(Callback):
        main_only = False
        def __init__(self, step): self.step = step
        def after_step(self, state, record):
            if state.step == self.step: os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no flush: a real crash
    data, out, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    cfg = TrainConfig(out_dir=out, max_steps=int(sys.argv[5]), batch_size=int(sys.argv[6]), micro_batch_size=int(sys.argv[7]),
                      lr=3e-2, warmup_steps=2, save_every=3, eval_fraction=0.2, eval_every=2, progress=False, plot=False)
    model, tok = tiny_model()
    cartridge = Cartridge.init(model, tok, p=6, seed=1)
    train(model, tok, cartridge, data, cfg, resume=resume, callbacks=[Kill(kill_at)] if kill_at else None)
""")

def run_script(tmp_path, *args, torchrun=0):
    script = tmp_path/"run_train.py"; script.write_text(SCRIPT)
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun
           else [sys.executable]) + [str(script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)

def curve(out): return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in read_metrics(out)]

def test_resume_after_kill_gives_the_same_curve(data_dir, tmp_path):
    full, killed = tmp_path/"full", tmp_path/"killed"
    assert run_script(tmp_path, data_dir, full, 0, 0, 8, 4, 2).returncode == 0
    r = run_script(tmp_path, data_dir, killed, 7, 0, 8, 4, 2)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert max(s for s, *_ in curve(killed)) == 7                      # it logged past its last checkpoint (step 6)
    assert (killed/"checkpoints"/"latest").read_text() == "step-000006"
    r = run_script(tmp_path, data_dir, killed, 0, 1, 8, 4, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert curve(killed) == curve(full)                                  # same steps, same losses, bit for bit
    from safetensors.torch import load_file
    a, b = load_file(full/"cartridge"/"cartridge.safetensors"), load_file(killed/"cartridge"/"cartridge.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def test_ddp_two_processes_match_one(data_dir, tmp_path):
    one, two = tmp_path/"one", tmp_path/"two"
    r1 = run_script(tmp_path, data_dir, one, 0, 0, 3, 4, 2)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = run_script(tmp_path, data_dir, two, 0, 0, 3, 4, 1, torchrun=2)    # 2 processes x 2 micro batches of 1
    assert r2.returncode == 0, r2.stderr[-3000:]
    from safetensors.torch import load_file
    a, b = load_file(one/"cartridge"/"cartridge.safetensors"), load_file(two/"cartridge"/"cartridge.safetensors")
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    la, lb = curve(one), curve(two)
    assert [s for s, *_ in la] == [s for s, *_ in lb]
    for (_, x, ex), (_, y, ey) in zip(la, lb):
        if x is not None: assert abs(x - y) < 1e-5
        if ex is not None: assert abs(ex - ey) < 1e-5

def test_bf16_model_trains_fp32_cartridge(data_dir, tmp_path):
    from cartridges.cartridge import Cartridge
    model, tok = tiny_model(dtype=torch.bfloat16)
    c = Cartridge.init(model, tok, p=4, seed=0)
    before = [p.detach().clone() for p in c.trainable_parameters()]
    cfg = TrainConfig(out_dir=str(tmp_path/"bf16"), max_steps=2, batch_size=4, micro_batch_size=4, progress=False, plot=False)
    train(model, tok, c, data_dir, cfg)
    assert all(p.dtype == torch.float32 for p in c.trainable_parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, c.trainable_parameters()))
    assert all(p.dtype == torch.bfloat16 and p.grad is None for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_metrics(tmp_path/"bf16") if "loss" in r)

def test_next_token_objective_on_corpus_and_conversations(data_dir, tmp_path):
    from cartridges.cartridge import Cartridge
    model, tok = tiny_model()
    text = "Kite-7 launches from pad 2 on March 3. The window opens at 06:10 UTC and lasts 40 minutes. " * 6
    blocks = corpus_examples(text, tok, block_size=32)
    cfg = TrainConfig(out_dir=str(tmp_path/"nt"), objective="next_token", max_steps=12, batch_size=2, micro_batch_size=2,
                      lr=5e-2, progress=False, plot=False)
    train(model, tok, Cartridge.init(model, tok, p=4, seed=0), blocks, cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path/"nt") if "loss" in r]
    assert losses[-1] < losses[0]
    # distillation needs top-k: corpus blocks have none
    with pytest.raises(ValueError, match="needs teacher top-k"):
        train(model, tok, Cartridge.init(model, tok, p=4), blocks, TrainConfig(out_dir=str(tmp_path/"x"), progress=False, plot=False))
    # next-token on conversations: targets are the teacher's tokens
    exs = build_examples(data_dir, tok, with_topk=False)
    assert all(e.topk_ids is None and e.n_targets > 0 for e in exs)
    cfg2 = TrainConfig(out_dir=str(tmp_path/"nt2"), objective="next_token", max_steps=2, batch_size=4, progress=False, plot=False)
    train(model, tok, Cartridge.init(model, tok, p=4), data_dir, cfg2)

def test_resume_refuses_other_data_or_config(data_dir, tmp_path):
    from cartridges.cartridge import Cartridge
    model, tok = tiny_model()
    cfg = TrainConfig(out_dir=str(tmp_path/"r"), max_steps=2, batch_size=4, save_every=1, progress=False, plot=False)
    train(model, tok, Cartridge.init(model, tok, p=4), data_dir, cfg)
    with pytest.raises(ValueError, match="config changed"):
        train(model, tok, Cartridge.init(model, tok, p=4), data_dir, TrainConfig(**{**cfg.to_dict(), "batch_size": 2}), resume=True)
    fewer = build_examples(data_dir, tok)[:6]
    with pytest.raises(ValueError, match="training data differ"):
        train(model, tok, Cartridge.init(model, tok, p=4), fewer, cfg, resume=True)
    with pytest.raises(ValueError, match="does not fit this cartridge"):
        train(model, tok, Cartridge.init(model, tok, p=9), data_dir, cfg, resume=True)

def test_gradient_checkpointing_takes_the_same_steps(data_dir, tmp_path):
    from cartridges.cartridge import Cartridge
    model, tok = tiny_model()
    out = {}
    for gc in (False, True):
        cfg = TrainConfig(out_dir=str(tmp_path/f"gc{gc}"), max_steps=2, batch_size=4, micro_batch_size=2, lr=3e-2,
                          gradient_checkpointing=gc, progress=False, plot=False)
        out[gc] = train(model, tok, Cartridge.init(model, tok, p=5, seed=2), data_dir, cfg)
    for a, b in zip(out[False].trainable_parameters(), out[True].trainable_parameters()): torch.testing.assert_close(a, b)
    for x, y in zip(curve(tmp_path/"gcFalse"), curve(tmp_path/"gcTrue"), strict=True):
        assert x[0] == y[0] and all((a is None and b is None) or abs(a - b) < 1e-5 for a, b in zip(x[1:], y[1:]))
