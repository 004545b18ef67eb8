"""Think-scorer matchers: exact vs sentence-embedding similarity (offline all-MiniLM-L6-v2)."""
import pytest

from vcap.rewards.parsing import Subject
from vcap.rewards.think import ThinkScorer


@pytest.fixture(scope="module")
def embedding_scorer():
    return ThinkScorer(matcher="embedding", subject_threshold=0.3, item_threshold=0.6)


def test_synonyms_match_with_embeddings_but_not_exactly(embedding_scorer):
    gt = [Subject("man", ["small"], ["moves left"])]
    pred = [Subject("person", ["tiny"], ["goes left"])]
    exact = ThinkScorer(matcher="exact")
    assert exact.tscore(exact.counts(pred, gt)) == 0.0
    counts = embedding_scorer.counts(pred, gt)
    assert counts.subjects.tp == 1 and counts.attributes.tp > 0.6 and counts.actions.tp > 0.6
    assert embedding_scorer.tscore(counts) > 0.6


def test_embedding_matcher_caches_each_string_once(embedding_scorer):
    matcher = embedding_scorer.matcher
    matcher.similarity(["a red circle", "grows"], ["grows"])
    cached = len(matcher.cache)
    matcher.similarity(["grows", "A red circle!"], ["a red circle"])  # same strings after normalisation
    assert len(matcher.cache) == cached


def test_unknown_matcher_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid: \['embedding', 'exact'\]"):
        ThinkScorer(matcher="fuzzy")


def test_embedding_judge_approximates_entailment():
    from vcap.judges import build_judge

    judge = build_judge("embedding", threshold=0.75)
    caption = "A small red circle moves to the left. Then a big square grows."
    out = judge.entail_many([(caption, ["the red circle moves left", "a dog barks loudly"]), ("", ["anything"])])
    assert out[0].verdicts == ["entailment", "neutral"] and out[1].verdicts == ["neutral"]
    assert judge.extract_events([caption])[0].items == ["A small red circle moves to the left.", "Then a big square grows."]
