"The real embedded default model: installed by .ci/install, converted once into the cache."
import subprocess, sys
import pytest
from cartridges.models import load_model

def test_default_model_answers_paris():
    model, tok = load_model("smollm2-135m")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

def test_saved_folder_is_plain_hf(tmp_path):
    from cartridges.models import default_model_path
    import json
    cfg = json.loads((default_model_path() / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30

def test_missing_local_path_is_clear():
    with pytest.raises(FileNotFoundError, match="No model folder"):
        load_model("./no/such/model")

def test_import_does_not_read_env_or_touch_cache(tmp_path):
    code = "import os; os.environ['CARTRIDGES_CACHE']='/nonexistent'; import cartridges.models as m; print(m.cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "/nonexistent"
