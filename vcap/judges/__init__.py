"""Judges decide entailment of hypotheses by a premise and extract events from text."""
from vcap.judges.base import (JUDGES, EntailmentResult, ExtractionResult, Judge, RatingResult, build_judge,
                              register_judge)
from vcap.judges import embedding, hf_judge, lexical, openai_judge  # noqa: F401  (register built-in backends)

__all__ = ["JUDGES", "EntailmentResult", "ExtractionResult", "Judge", "RatingResult", "build_judge", "register_judge"]
