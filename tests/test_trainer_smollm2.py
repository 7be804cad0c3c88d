"The real default model: context distillation lowers the student's loss on a small synthesized set (~1-2 min on CPU)."
import torch
from cartridges.cartridge import Cartridge
from cartridges.core import Conversation, Message
from cartridges.models import load_model
from cartridges.trainer import TrainConfig, batch_losses, build_examples, collate, read_metrics, train

CHUNK = ("Kite-7 is a sounding rocket built by the Orla Institute. Its launch window opens on March 3 at 06:10 UTC "
         "from pad 2 at Vask Island. The mission carries a spectrometer named HALO that measures ozone.")
QUESTIONS = ["Who built Kite-7?", "When does the Kite-7 launch window open?", "What instrument does Kite-7 carry?",
             "Where does Kite-7 launch from?"]

def teacher_conversation(model, tok, question, i, max_new_tokens=24, k=20):
    "Greedy answer of the teacher (the model with the chunk in its system prompt) and its top-k log-probabilities."
    system = f"Answer the question using this document.\n\n{CHUNK}"
    prompt = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": question}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ids = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)[0, prompt.shape[1]:]
    with torch.no_grad(): logits = model(torch.cat([prompt[0], ids])[None]).logits[0, prompt.shape[1] - 1:-1]
    top = torch.log_softmax(logits.float(), -1).topk(k)
    answer = Message("assistant", tok.decode(ids, skip_special_tokens=True), ids.numpy(), top.indices.numpy(), top.values.numpy())
    return Conversation([Message("user", question), answer], chunk=CHUNK, system_prompt=system, id=f"q{i}")

def mean_loss(model, cartridge, examples, pad_id):
    with torch.no_grad(): return batch_losses(model, cartridge, collate(examples, pad_id)).mean().item()

def test_distillation_loss_goes_down_on_smollm2(tmp_path):
    model, tok = load_model("smollm2-135m")
    convs = [teacher_conversation(model, tok, q, i) for i, q in enumerate(QUESTIONS)]
    assert any("Orla" in c.messages[1].content or "HALO" in c.messages[1].content for c in convs)  # the teacher used the chunk
    examples = build_examples(convs, tok)
    cartridge = Cartridge.init(model, tok, p=16, method="random", seed=0)
    before = mean_loss(model, cartridge, examples, tok.pad_token_id)
    cfg = TrainConfig(out_dir=str(tmp_path/"run"), max_steps=12, batch_size=4, micro_batch_size=4, lr=2e-2,
                      warmup_steps=1, progress=False, plot=False)
    train(model, tok, cartridge, convs, cfg)
    after = mean_loss(model, cartridge, examples, tok.pad_token_id)
    losses = [r["loss"] for r in read_metrics(tmp_path/"run") if "loss" in r]
    assert abs(losses[0] - before) < 1e-3          # the logged first-step loss is the loss of the initial cartridge
    assert after < 0.9 * before and losses[-1] < losses[0], (before, after, losses)   # seen: 1.82 -> 1.49
