"""Think scorer (Tscore): LLM-free attribute/action F1 of the structured thinking vs the ground truth.

Predicted subjects are matched one-to-one to ground-truth subjects (Hungarian on name similarity).
Attributes and actions are then soft-matched within matched pairs; items of unmatched subjects count
as false positives (predicted) or false negatives (ground truth), so padding does not pay. A record with
``structure: []`` has nothing to recall: its score is n/a (``RewardOutput.no_reference``), never the 1 of two
empty sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vcap.rewards.base import Reward, RewardOutput, register_reward
from vcap.rewards.matching import MatchCounts, build_matcher, hungarian, soft_match
from vcap.rewards.parsing import Subject, subjects_from_json


@dataclass
class ThinkCounts:
    attributes: MatchCounts
    actions: MatchCounts
    subjects: MatchCounts


class ThinkScorer:
    def __init__(self, matcher: str = "exact", subject_threshold: float = 0.5, item_threshold: float = 0.5,
                 attribute_weight: float = 0.5, action_weight: float = 0.5, **matcher_options):
        if attribute_weight < 0 or action_weight < 0 or attribute_weight + action_weight == 0:
            raise ValueError("attribute_weight and action_weight must be >= 0 and not both 0")
        self.matcher = build_matcher(matcher, **matcher_options)
        self.subject_threshold = subject_threshold
        self.item_threshold = item_threshold
        self.weights = (attribute_weight, action_weight)

    def counts(self, pred: list[Subject], gt: list[Subject]) -> ThinkCounts:
        pairs = hungarian(self.matcher.similarity([s.name for s in pred], [s.name for s in gt]),
                          self.subject_threshold) if pred and gt else []
        attrs, acts = MatchCounts(), MatchCounts()
        for i, j, _ in pairs:
            attrs += soft_match(pred[i].attributes, gt[j].attributes, self.matcher, self.item_threshold)
            acts += soft_match(pred[i].actions, gt[j].actions, self.matcher, self.item_threshold)
        matched_pred = {i for i, _, _ in pairs}
        matched_gt = {j for _, j, _ in pairs}
        for i, s in enumerate(pred):
            if i not in matched_pred:
                attrs += MatchCounts(0.0, len(s.attributes), 0)
                acts += MatchCounts(0.0, len(s.actions), 0)
        for j, s in enumerate(gt):
            if j not in matched_gt:
                attrs += MatchCounts(0.0, 0, len(s.attributes))
                acts += MatchCounts(0.0, 0, len(s.actions))
        return ThinkCounts(attrs, acts, MatchCounts(float(len(pairs)), len(pred), len(gt)))

    def tscore(self, counts: ThinkCounts) -> float:
        wa, wb = self.weights
        return (wa * counts.attributes.f1() + wb * counts.actions.f1()) / (wa + wb)


def gt_subjects(sample: dict) -> list[Subject]:
    if "structure" not in sample:
        raise KeyError(f"sample {sample.get('id', '?')} has no 'structure' (needed by the think reward)")
    return subjects_from_json(sample["structure"])


@register_reward("think")
class ThinkReward(Reward):
    def __init__(self, **scorer_options):
        self.scorer = ThinkScorer(**scorer_options)

    def score(self, parsed, samples) -> RewardOutput:
        n = len(parsed)
        scores, attr_f1, act_f1 = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        no_reference = torch.zeros(n, dtype=torch.bool)
        failures = []
        for i, (p, sample) in enumerate(zip(parsed, samples)):
            gt = gt_subjects(sample)
            if not gt:
                no_reference[i] = True
                attr_f1[i] = act_f1[i] = float("nan")
                continue
            if p.subjects is None:
                failures.append((i, p.reason or "no structured think block"))
                continue
            counts = self.scorer.counts(p.subjects, gt)
            scores[i] = self.scorer.tscore(counts)
            attr_f1[i], act_f1[i] = counts.attributes.f1(), counts.actions.f1()
        return RewardOutput(scores, {"attribute_f1": attr_f1, "action_f1": act_f1}, failures,
                            no_reference=no_reference)
