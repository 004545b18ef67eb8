"""The ``hf`` judge's plumbing with a tiny random causal LM (its replies are garbage: failures are counted)."""
import pytest
import torch

from vcap.judges import build_judge


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vcap.model.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("tiny-lm")
    tok = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_hf_judge_batches_caches_and_counts_failures(tiny_lm, tmp_path, monkeypatch):
    judge = build_judge("hf", model=tiny_lm, max_tokens=8, batch_size=2, parse_retries=0,
                        cache=str(tmp_path / "c.sqlite"))
    out = judge.entail_many([("A red circle.", ["a circle"]), ("A blue square.", ["a square"]), ("x", ["y"])])
    assert all(r.verdicts is None and "unparseable" in r.error for r in out)  # a random LM writes no JSON
    assert judge.calls == 3 and judge.failures == 3

    # scripted replies: parsed, cached, and not asked again; a failed judgment was not cached: asked again
    monkeypatch.setattr(judge, "complete", lambda prompts: ['{"verdicts": ["entailment"]}'] * len(prompts))
    assert judge.entail_many([("A green circle.", ["a circle"])])[0].verdicts == ["entailment"]
    monkeypatch.setattr(judge, "complete", lambda prompts: pytest.fail("cache miss"))
    assert judge.entail_many([("A green circle.", ["a circle"])])[0].verdicts == ["entailment"]
    monkeypatch.setattr(judge, "complete", lambda prompts: ['{"verdicts": ["neutral"]}'] * len(prompts))
    assert judge.entail_many([("A red circle.", ["a circle"])])[0].verdicts == ["neutral"] and judge.calls == 5
    assert judge.answered_by == {f"hf {tiny_lm}": 2, f"cache (hf {tiny_lm})": 1}  # provenance of every answer
    assert judge.describe()["backend"] == "hf"
