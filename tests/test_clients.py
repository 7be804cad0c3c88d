"HFClient on the real default model: exact stops, shared-prefix reuse changes nothing but speed."
import numpy as np, pytest
from cartridges.clients import HFClient, chat_prompt_ids, prefix_groups

@pytest.fixture(scope="module")
def model_tok():
    from cartridges.models import load_model
    return load_model()

def test_stops_on_im_end_and_keeps_it(model_tok):
    model, tok = model_tok
    s = HFClient(model, tok).chat([[{"role": "user", "content": "What is the capital of France? One word."}]], max_tokens=16)[0]
    assert "Paris" in s.text and s.finish_reason == "stop"
    assert s.token_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") and "<|im_end|>" not in s.text
    assert np.array_equal(s.topk_ids[:, 0], s.token_ids) and s.topk_ids.shape == (s.n_tokens, 20)

def test_prefix_reuse_is_exact_on_the_real_model(model_tok):
    model, tok = model_tok
    chunk = ("The Delta kite has a span of 180 cm and flies in winds of 8 to 20 km/h. It was designed in 1998 by the "
             "Lisbon kite club, who tested it on the beach of Carcavelos. ") * 3
    convs = [[{"role": "system", "content": chunk}, {"role": "user", "content": q}]
             for q in ("Who designed the Delta kite?", "What wind does it need?", "Summarize the text.")]
    prompts = [chat_prompt_ids(tok, c) for c in convs]
    assert prefix_groups(prompts)[0][0] > 100 and len(prefix_groups(prompts)) == 1  # one shared prefill
    a = HFClient(model, tok).chat(convs, max_tokens=16)
    b = HFClient(model, tok, prefix_reuse=False).chat(convs, max_tokens=16)
    for x, y in zip(a, b):
        assert np.array_equal(x.token_ids, y.token_ids) and np.array_equal(x.topk_ids[:, :5], y.topk_ids[:, :5])
        assert np.abs(x.topk_logprobs - y.topk_logprobs).max() < 1e-3
