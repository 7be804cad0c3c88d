"Chat with the real SmolLM2: KV reuse across turns is exact, and the terminal chat works from a real pipe."
import subprocess, sys
import pytest
from cartridges.cartridge import Cartridge
from cartridges.chat import ChatSession, ChatWidget
from cartridges.models import load_model

KITE = "The kite launched from Brighton beach at dawn on 3 May."

@pytest.fixture(scope="module")
def real():
    model, tok = load_model("smollm2-135m")
    p = len(tok(KITE, add_special_tokens=False).input_ids)
    return model, tok, Cartridge.init(model, tok, p=p, method="text", text=KITE)

def test_second_turn_reuses_cache_and_is_exact(real):
    model, tok, cart = real
    chat = ChatSession(model, tok, [cart], max_new_tokens=24)
    chat.ask("Where did the kite launch?")
    n_first = chat.last_prefill
    second = chat.ask("And when?")
    n_all = len(tok.apply_chat_template(chat.messages[:3], add_generation_prompt=True, return_dict=False))
    assert chat.last_reused > n_first and chat.last_prefill < 20 and chat.last_prefill + chat.last_reused == n_all
    # the same answer as generating from scratch with the whole conversation (greedy)
    assert second == cart.generate(model, tok, [chat.messages[:3]], max_new_tokens=24)[0]

def test_undo_then_new_question_is_exact(real):
    model, tok, cart = real
    chat = ChatSession(model, tok, [cart], max_new_tokens=16)
    chat.ask("Where did the kite launch?"); chat.ask("Tell me a joke.")
    chat.undo()
    answer = chat.ask("On what date?")
    assert answer == cart.generate(model, tok, [chat.messages[:3]], max_new_tokens=16)[0]

def test_widget_switches_cartridges(real, tmp_path):
    model, tok, cart = real
    cart.save(tmp_path/"kite")
    w = ChatWidget(model, tok, [str(tmp_path/"kite")], max_new_tokens=16)
    with_cart = w.send("Where did the kite launch?")
    w.clear(); w.use([])
    without = w.send("Where did the kite launch?")
    assert w.session.p == 0 and with_cart != without

def test_chat_repl_from_a_pipe(real, tmp_path):
    model, tok, cart = real
    cart.save(tmp_path/"kite")
    code = ("from cartridges.chat import chat_repl; from cartridges.models import load_model; "
            f"m, t = load_model('smollm2-135m'); chat_repl(m, t, [{str(tmp_path/'kite')!r}], max_new_tokens=16)")
    stdin = "Where did the kite launch?\n/undo\n/clear\nWhere did the kite launch?\n/quit\n"
    r = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l]
    want = cart.generate(model, tok, [[{"role": "user", "content": "Where did the kite launch?"}]], max_new_tokens=16)[0]
    assert lines == [want, "(removed the last exchange)", "(conversation cleared)", want], lines
