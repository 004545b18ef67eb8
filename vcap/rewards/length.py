"""Length reward: 1 when the ``<answer>`` caption's word count lies in [min_words, max_words].

Words are the whitespace-separated pieces of the ``<answer>`` text (``str.split()``). Outside the band the score falls
linearly to 0 over ``fall_words`` words: below, 1 - (min_words - n) / fall_words, 0 at n <= min_words - fall_words;
above, 1 - (n - max_words) / fall_words, 0 at n >= max_words + fall_words. A completion without a parseable
``<answer>`` block scores 0 and the reason is counted (as the caption reward does). The sub-score ``words`` is the word
count (NaN, so left out of the logged mean, where there is no answer).

Options come through ``reward_options: {length: {min_words: 3, max_words: 8, fall_words: 4}}``. The defaults make it a
length cap only (CapRL++'s R_len pays 1 up to a limit and falls linearly after it), at a real caption's scale.
"""
from __future__ import annotations

import numbers

import torch

from vcap.errors import UsageError
from vcap.rewards.base import Reward, RewardOutput, register_reward


def length_score(words: float, min_words: float, max_words: float, fall_words: float) -> float:
    """1 inside [min_words, max_words], linear to 0 over ``fall_words`` words past either end, never below 0."""
    if words < min_words:
        return max(0.0, 1.0 - (min_words - words) / fall_words)
    if words > max_words:
        return max(0.0, 1.0 - (words - max_words) / fall_words)
    return 1.0


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"reward_options.length.{name} must be a number, got {value!r}")
    return float(value)


@register_reward("length")
class LengthReward(Reward):
    """``min_words`` / ``max_words``: the band that pays 1; ``fall_words``: how many words past either end the score
    takes to fall linearly to 0."""

    def __init__(self, min_words: float = 0, max_words: float = 300, fall_words: float = 100):
        low, high, fall = _number("min_words", min_words), _number("max_words", max_words), _number("fall_words", fall_words)
        if low < 0:
            raise UsageError(f"reward_options.length.min_words must be >= 0, got {min_words!r}")
        if high < low:
            raise UsageError(f"reward_options.length.max_words must be >= min_words ({min_words!r}), got {max_words!r}")
        if fall <= 0:
            raise UsageError(f"reward_options.length.fall_words must be > 0, got {fall_words!r}")
        self.min_words, self.max_words, self.fall_words = low, high, fall

    def score(self, parsed, samples) -> RewardOutput:
        n = len(parsed)
        scores, words = torch.zeros(n), torch.full((n,), float("nan"))
        failures = []
        for i, p in enumerate(parsed):
            if p.answer is None:
                failures.append((i, "no <answer> block"))
                continue
            words[i] = len(p.answer.split())
            scores[i] = length_score(float(words[i]), self.min_words, self.max_words, self.fall_words)
        return RewardOutput(scores, {"words": words}, failures)
