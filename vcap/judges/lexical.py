"""A deterministic, LLM-free judge for tests and the synthetic demo.

A hypothesis is entailed when every content word of it appears in one sentence of the premise.
This is exact-match coverage, not semantics: it is right for templated captions and a crude
stand-in anywhere else.
"""
from __future__ import annotations

import re

from vcap.judges.base import EntailmentResult, ExtractionResult, Judge, register_judge
from vcap.rewards.parsing import normalize

STOPWORDS = frozenset("a an the is are was were and then while of to in on at with it its".split())
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if normalize(s)]


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in normalize(text).split() if w not in STOPWORDS)


@register_judge("lexical")
class LexicalJudge(Judge):
    def entail_many(self, requests):
        results = []
        for premise, hypotheses in requests:
            premise_sets = [content_words(s) for s in sentences(premise)]
            verdicts = []
            for hyp in hypotheses:
                words = content_words(hyp)
                hit = bool(words) and any(words <= ps for ps in premise_sets)
                verdicts.append("entailment" if hit else "neutral")
            results.append(EntailmentResult(verdicts))
        return results

    def extract_events(self, texts):
        return [ExtractionResult(sentences(t)) for t in texts]

    def answer_choices(self, requests):
        """The option whose content words all stand in one caption sentence, the sentence sharing the most content
        words with the question; the last option ("does not say") when no option, or more than one equally, fits."""
        out = []
        for text, question, options in requests:
            asked = content_words(question)
            sentence_words = [content_words(s) for s in sentences(text)]
            best: dict[int, int] = {}
            for k, option in enumerate(options[:-1]):
                words = content_words(option)
                fits = [len(asked & s) for s in sentence_words if words and words <= s]
                if fits:
                    best[k] = max(fits)
            top = max(best.values(), default=None)
            winners = [k for k, v in best.items() if v == top]
            out.append((winners[0] if len(winners) == 1 else len(options) - 1, None))
        return out
