"""Judges decide entailment of hypotheses by a premise and extract events from text."""
from vcap.judges.base import JUDGES, EntailmentResult, ExtractionResult, Judge, build_judge, register_judge
from vcap.judges import lexical  # noqa: F401  (registers "lexical")

__all__ = ["JUDGES", "EntailmentResult", "ExtractionResult", "Judge", "build_judge", "register_judge"]
