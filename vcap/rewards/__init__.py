"""Rewards: the registry plus the built-in format, think, caption, cnscore, length and qa scorers."""
from vcap.rewards.base import REWARDS, Reward, RewardOutput, RewardSet, build_reward, register_reward
from vcap.rewards import caption, cnscore, format, length, qa, think  # noqa: F401  (register built-ins)
from vcap.rewards.parsing import ParsedCompletion, Subject, format_target, parse_completion

__all__ = ["REWARDS", "Reward", "RewardOutput", "RewardSet", "build_reward", "register_reward",
           "ParsedCompletion", "Subject", "format_target", "parse_completion"]
