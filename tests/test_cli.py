"The `cartridges` console script, run for real as a user would (subprocesses, the real default model)."
import json, subprocess, sys
from pathlib import Path
import pandas as pd, yaml

def cli(*args, timeout=900):
    return subprocess.run(["cartridges", *args], capture_output=True, text=True, timeout=timeout)

def test_help_lists_commands_and_config_keys():
    out = cli("--help")
    assert out.returncode == 0
    for cmd in ("quickstart", "synthesize", "train", "eval", "chat", "serve"): assert cmd in out.stdout
    out = cli("train", "--help")
    assert out.returncode == 0 and "train.max_steps" in out.stdout and "cartridge length in tokens" in out.stdout

def test_bad_key_is_one_clear_error(tmp_path):
    out = cli("quickstart", f"out_dir={tmp_path/'run'}", "train.max_stepz=3")
    assert out.returncode == 2
    assert "Unknown config key 'train.max_stepz' for TrainConfig; valid keys:" in out.stderr and "max_steps" in out.stderr
    assert not (tmp_path/"run").exists()  # nothing half-written
    bad = tmp_path/"bad.yaml"; bad.write_text("p: [unclosed")
    out = cli("train", "--config", str(bad))
    assert out.returncode == 2 and "bad.yaml is not valid YAML" in out.stderr

def test_quickstart_end_to_end_reduced(tmp_path):
    "The whole mission on SmolLM2 in a reduced size: conversations, a trained cartridge, a report and an answer."
    cfg = tmp_path/"qs.yaml"
    cfg.write_text(yaml.safe_dump({"n_conversations": 4, "n_eval": 2, "batch_size": 6, "max_tokens_a": 24,
                                   "max_tokens_b": 24, "p": 32, "max_new_tokens": 8,
                                   "train": {"max_steps": 2, "batch_size": 4, "micro_batch_size": 2}}))
    out = cli("quickstart", "--config", str(cfg), f"out_dir={tmp_path/'qs'}", "train.lr=1e-2")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path/"qs"
    report = pd.read_csv(run/"report"/"report.csv")
    assert len(report) == 3 and report.log_ppl.notna().all()
    assert (run/"cartridge"/"meta.json").exists() and len(list((run/"data").glob("*.parquet"))) >= 1
    resolved = yaml.safe_load((run/"config.yaml").read_text())
    assert resolved["train"]["lr"] == 1e-2 and resolved["n_conversations"] == 4  # the resolved config is kept
    assert "Q: What does load_conversations return?" in out.stdout and "cartridge:" in out.stdout

def test_eval_command_on_dossier_case(tmp_path):
    out = cli("eval", "questions=kite-launch", "limit=2", "baselines=[no_context, truncation]", "p=32", f"out_dir={tmp_path/'ev'}")
    assert out.returncode == 0, out.stderr[-3000:]
    report = pd.read_csv(tmp_path/"ev"/"report.csv")
    assert list(report.method) == ["no context", "truncation p=32"] and report.log_ppl.notna().all()
    assert report.kv_bytes.iloc[0] == 0 and report.kv_bytes.iloc[1] > 0

def test_chat_command_from_a_pipe():
    out = subprocess.run(["cartridges", "chat", "max_new_tokens=6"], input="What is the capital of France?\n/quit\n",
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()  # the streamed answer
