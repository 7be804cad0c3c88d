"Eval: the dossier-bench loader on every case, the answer metrics, evaluate's report files, the real model's ICL gain."
import json, math
import pandas as pd
import pytest
import torch
from cartridges.eval import (InContext, LossEval, NoContext, Summary, Truncation, check_questions, chrf, dossier_cases,
                             dossier_questions, evaluate, exact_match, fact_recall, kv_bytes_per_token,
                             load_dossier, loss_eval, normalize_answer, token_f1)


@pytest.mark.parametrize("case", ["kite-launch", "harbor-dispute", "brightwater-acquisition"])
def test_dossier_cases_load(case):
    assert case in dossier_cases()
    qs = dossier_questions(case)
    assert len(qs) >= 7 and (qs.group == "qa-grounded").all() and (qs.corpus_id == case).all()
    assert all(len(f) >= 1 for f in qs.must_facts)
    assert all(a == "; ".join(f) + "." for a, f in zip(qs.answer, qs.must_facts))
    resource, _ = load_dossier(case)
    assert resource.name == case and len(resource.text()) > 5000


def test_kite_launch_is_the_default_and_its_facts_are_in_the_corpus():
    resource, qs = load_dossier()
    corpus = resource.text()
    assert qs.corpus_id.unique().tolist() == ["kite-launch"]
    assert qs.id.tolist()[:2] == ["qa-launch-date#t1", "qa-video-deal#t1"]
    for fact in ["29 October 2025", "£21,000", "Owen Castillo", "14 of our 60 users"]: assert fact in corpus


def test_multi_turn_scenarios_carry_their_history():
    qs = dossier_questions("kite-launch", groups=["followup"])
    assert len(qs) == 3 and qs.history[0] == [] and len(qs.history[2]) == 4
    assert qs.history[1][0] == {"role": "user", "content": qs.question[0]}


def test_unknown_case_lists_known_ones():
    with pytest.raises(ValueError, match=r"Unknown dossier-bench case 'nope'; known cases: \['brightwater-acquisition', 'harbor-dispute', 'kite-launch'\]"):
        load_dossier("nope")
    with pytest.raises(ValueError, match="no scenario with must-facts"):
        dossier_questions("kite-launch", groups=["no-such-group"])


def test_bad_question_tables_are_named():
    good = pd.DataFrame({"corpus_id": ["c"], "question": ["q?"], "answer": ["a"]})
    with pytest.raises(TypeError, match="pandas DataFrame"): check_questions([{"question": "q"}])
    with pytest.raises(ValueError, match="row 0: 'question' must be a non-empty string"): check_questions(good.assign(question=[""]))
    with pytest.raises(ValueError, match="is empty"): check_questions(good.iloc[:0])


def test_metrics():
    assert normalize_answer("The £120,000 budget.") == ["120000", "budget"]
    assert exact_match("NPS: 41", "nps 41") == 1.0 and exact_match("NPS 42", "NPS 41") == 0.0
    assert token_f1("seven promoters", "7 promoters and 2 detractors") == pytest.approx(2 * (1/2 * 1/5) / (1/2 + 1/5))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    facts = ["NPS 41", "7 promoters and 2 detractors out of 12", "Holloway Logistics (6) and Dunmore Council (5)"]
    assert fact_recall("The NPS was 41 with 7 promoters, 2 detractors of 12.", facts) == pytest.approx(2/3)
    assert fact_recall("NPS 41", facts, threshold=1.0) == pytest.approx(1/3)
    assert chrf("29 October 2025", "29 October 2025") == 100.0
    assert 0 < chrf("October 2025", "29 October 2025") < 100


def test_evaluate_writes_report_and_plot(tmp_path):
    from cartridges.models import tiny_model
    model, tok = tiny_model()
    resource, qs = load_dossier()
    corpus, qs = resource.text(), qs.iloc[:3]
    report = evaluate(model, tok, qs, [NoContext(), InContext(corpus[:2000]), InContext(corpus[:2000], where="system"),
                                       Truncation(corpus, 64), Summary(corpus, 32, summary="Kite launches on 29 October.")],
                      max_new_tokens=4, batch_size=2, run_dir=tmp_path, progress=False)
    assert report.method.tolist() == ["no context", "icl", "icl (system prompt)", "truncation p=64", "summary p=32"]
    per_token = kv_bytes_per_token(model)
    assert report.kv_bytes.tolist() == [p * per_token for p in report.p]
    assert report.p[0] == 0 and report.p[3] == 64 and report.p[4] == len(tok("Kite launches on 29 October.", add_special_tokens=False)["input_ids"])
    assert report.p[2] > report.p[1]  # the system prompt variant also caches the template's system header
    assert report[["log_ppl", "f1", "chrf", "fact_recall", "tok_s"]].notna().all().all()
    for name in ["report.csv", "report.json", "answers.jsonl", "frontier.html"]: assert (tmp_path / name).stat().st_size > 0
    assert len(json.loads((tmp_path / "report.json").read_text())) == 5
    answers = pd.read_json(tmp_path / "answers.jsonl", lines=True)
    assert len(answers) == 15 and set(answers.columns) >= {"method", "question", "prediction", "log_ppl", "fact_recall"}
    assert "plotly" in (tmp_path / "frontier.html").read_text()


def test_evaluate_rejects_bad_methods():
    from cartridges.models import tiny_model
    model, tok = tiny_model()
    qs = pd.DataFrame({"corpus_id": ["c"], "question": ["q?"], "answer": ["a"]})
    with pytest.raises(TypeError, match="Not an eval method: 42"): evaluate(model, tok, qs, [42], progress=False)
    with pytest.raises(ValueError, match="at least one method"): evaluate(model, tok, qs, [], progress=False)
    with pytest.raises(ValueError, match="where must be 'prefix' or 'system'"): InContext("text", where="middle")
    with pytest.raises(ValueError, match="p must be a positive"): Truncation("text", 0)


def test_real_model_gains_from_the_corpus_in_context():
    "SmolLM2-135M: the kite-launch corpus in context lowers the log-perplexity of the reference answers a lot."
    from cartridges.models import load_model
    model, tok = load_model("smollm2-135m")
    corpus, qs = load_dossier()
    no_ctx = loss_eval(model, tok, NoContext().context(model, tok), qs)["log_ppl"]
    icl = loss_eval(model, tok, InContext(corpus).context(model, tok), qs)["log_ppl"]
    assert icl < no_ctx - 0.5, (icl, no_ctx)


def test_loss_eval_runs_inside_training(tmp_path):
    "LossEval plugs into `train(callbacks=[...])`: its log-perplexity lands in metrics.jsonl at every eval."
    from cartridges.cartridge import Cartridge
    from cartridges.clients import HFClient
    from cartridges.models import tiny_model
    from cartridges.resources import TextResource
    from cartridges.synthesis import SelfStudy, synthesize
    from cartridges.train_callbacks import read_metrics
    from cartridges.trainer import TrainConfig, train
    model, tok = tiny_model()
    resource, qs = load_dossier()
    ss = SelfStudy(HFClient(model, tok), TextResource(resource.text()[:3000]), max_tokens_a=8, max_tokens_b=8)
    data = synthesize(ss, n=4, out_dir=tmp_path / "data", batch_size=4, progress=False)
    cart = Cartridge.init(model, tok, p=8, method="corpus", resource=resource)
    hook = LossEval(model, tok, qs.iloc[:2])
    before = hook(0, cart)["eval_qa_log_ppl"]
    train(model, tok, cart, data, TrainConfig(out_dir=str(tmp_path / "train"), max_steps=2, batch_size=2, micro_batch_size=2,
                                                eval_every=1, progress=False, plot=False), callbacks=[hook])
    evals = [r for r in read_metrics(tmp_path / "train") if "eval_qa_log_ppl" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(math.isfinite(r["eval_qa_log_ppl"]) for r in evals) and evals[-1]["eval_qa_log_ppl"] != before
