"""``embedding`` judge: an offline approximation of entailment, not an LLM.

A hypothesis counts as entailed when its best cosine similarity to one sentence of the premise is at least
``threshold`` (MiniLM by default). It cannot tell "red" from "blue" reliably or see negation; use it for
smoke runs and offline demos, and an LLM judge for numbers you report.
"""
from __future__ import annotations

from vcap.judges.base import EntailmentResult, ExtractionResult, Judge, register_judge
from vcap.judges.lexical import sentences
from vcap.rewards.matching import EmbeddingMatcher


@register_judge("embedding")
class EmbeddingJudge(Judge):
    def __init__(self, model: str = EmbeddingMatcher.DEFAULT, threshold: float = 0.75, device: str = "cpu"):
        self.matcher = EmbeddingMatcher(model=model, device=device)
        self.model_name, self.threshold = model, threshold

    def describe(self):
        return {"backend": "embedding", "model": self.model_name, "threshold": self.threshold}

    def entail_many(self, requests):
        results = []
        for premise, hypotheses in requests:
            parts = sentences(premise)
            if not parts:
                results.append(EntailmentResult(["neutral"] * len(hypotheses)))
                continue
            best = self.matcher.similarity(hypotheses, parts).max(axis=1)
            results.append(EntailmentResult(["entailment" if s >= self.threshold else "neutral" for s in best]))
        return results

    def extract_events(self, texts):
        return [ExtractionResult(sentences(t)) for t in texts]
