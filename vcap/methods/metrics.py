"""torchmetrics classes for validation: ``ThinkF1``, ``CaptionScore`` and ``QAAccuracy``. States are sums, so DDP
sync is exact."""
from __future__ import annotations

import hashlib
import random

import torch
from torchmetrics import Metric

from vcap.judges import Judge, build_judge
from vcap.rewards.caption import escore
from vcap.rewards.matching import f1_from_counts
from vcap.rewards.parsing import Subject
from vcap.rewards.qa import check_qa, shuffled_choices
from vcap.rewards.think import ThinkScorer


class ThinkF1(Metric):
    """Micro attribute/action precision, recall and F1 of structured thinking over a dataset.

    ``update(predicted, targets)``: predicted subject lists (None for an unparseable think block, which
    counts as predicting nothing) and ground-truth subject lists.
    """

    full_state_update = False
    _KEYS = ("attr_tp", "attr_pred", "attr_gt", "act_tp", "act_pred", "act_gt", "parsed", "total")

    def __init__(self, matcher: str = "exact", subject_threshold: float = 0.5, item_threshold: float = 0.5,
                 scorer: ThinkScorer | None = None, **kwargs):
        super().__init__(**kwargs)
        # a scorer shared with the think reward loads its embedding model once
        self.scorer = scorer or ThinkScorer(matcher=matcher, subject_threshold=subject_threshold,
                                            item_threshold=item_threshold)
        for key in self._KEYS:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: list[list[Subject] | None], targets: list[list[Subject]]) -> None:
        sums = dict.fromkeys(self._KEYS, 0.0)
        for pred, gt in zip(predicted, targets, strict=True):
            counts = self.scorer.counts(pred or [], gt)
            for prefix, c in (("attr", counts.attributes), ("act", counts.actions)):
                sums[f"{prefix}_tp"] += c.tp
                sums[f"{prefix}_pred"] += c.n_pred
                sums[f"{prefix}_gt"] += c.n_gt
            sums["parsed"] += float(pred is not None)
            sums["total"] += 1
        # out-of-place adds: states created under inference mode must not be updated in place later
        for key, value in sums.items():
            setattr(self, key, getattr(self, key) + value)

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for kind, tp, n_pred, n_gt in (("attribute", self.attr_tp, self.attr_pred, self.attr_gt),
                                       ("action", self.act_tp, self.act_pred, self.act_gt)):
            out[f"{kind}_precision"] = tp / n_pred if n_pred > 0 else torch.tensor(1.0 if n_gt == 0 else 0.0)
            out[f"{kind}_recall"] = tp / n_gt if n_gt > 0 else torch.tensor(1.0 if n_pred == 0 else 0.0)
            out[f"{kind}_f1"] = torch.tensor(f1_from_counts(float(tp), float(n_pred), float(n_gt)))
        out["f1"] = (out["attribute_f1"] + out["action_f1"]) / 2
        out["parse_rate"] = self.parsed / self.total.clamp(min=1)
        return {k: v.float() for k, v in out.items()}


class CaptionScore(Metric):
    """AutoDQ-style event recall/precision/F1 and the mean Escore of captions, judged by ``judge``.

    Recall: ground-truth events entailed by the caption. Precision: events extracted from the caption
    entailed by the reference caption. No predicted events give precision 1; a record without ground-truth events
    has no recall and is not scored (counted in ``no_events``, never recall 1). F1 is the harmonic mean of the
    averaged recall and precision. Judge failures are counted, not scored.
    """

    full_state_update = False

    def __init__(self, judge: str | Judge = "lexical", judge_options: dict | None = None, mode: str = "step",
                 low: float = 0.28, high: float = 0.35, **kwargs):
        super().__init__(**kwargs)
        # a Judge instance (e.g. the caption reward's) shares its client, model and cache
        self.judge = judge if isinstance(judge, Judge) else build_judge(judge, **(judge_options or {}))
        self.mode, self.low, self.high = mode, low, high
        for key in ("recall", "precision", "escore", "count", "failed", "no_events"):
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, captions: list[str | None], events: list[list[str]], references: list[str]) -> None:
        scored = [i for i, ev in enumerate(events) if ev]
        sums = dict(recall=0.0, precision=0.0, escore=0.0, count=0.0, failed=0.0,
                    no_events=float(len(events) - len(scored)))
        captions, events, references = ([seq[i] for i in scored] for seq in (captions, events, references))
        captions = [c or "" for c in captions]
        recall_hits = self.judge.entail_nonempty(list(zip(captions, events)))
        extracted = self.judge.extract_events(captions)
        pred_events = [x.items or [] for x in extracted]
        precision_hits = self.judge.entail_nonempty(list(zip(references, pred_events)))
        for i, (ev, ex, pe) in enumerate(zip(events, extracted, pred_events)):
            rec, prec = recall_hits[i][0], precision_hits[i][0]
            if rec is None or prec is None or ex.items is None:
                sums["failed"] += 1
                continue
            recall = sum(rec) / len(rec)
            sums["recall"] += recall
            sums["precision"] += sum(prec) / len(prec) if pe else 1.0
            sums["escore"] += escore(recall, self.mode, self.low, self.high)
            sums["count"] += 1
        for key, value in sums.items():
            setattr(self, key, getattr(self, key) + value)

    def compute(self) -> dict[str, torch.Tensor]:
        """Means over the captions the judge could score; NaN (never 0) when it scored none."""
        n = self.count if self.count > 0 else torch.tensor(float("nan"), dtype=self.count.dtype)
        recall, precision = self.recall / n, self.precision / n
        f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else torch.zeros_like(recall)
        if self.count == 0:
            f1 = torch.full_like(recall, float("nan"))
        return {k: v.float() for k, v in dict(event_recall=recall, event_precision=precision, event_f1=f1,
                                              escore=self.escore / n, failed=self.failed,
                                              no_events=self.no_events).items()}


def held_out_asks(qa: list[dict], record_id: str) -> list[tuple[str, list[str], int]]:
    """Every question of a record once, as (question, options, right index): options in an order fixed by the record
    id and the question's position in its list alone (never by the caption), so every model and checkpoint is asked
    exactly the same, and ``UNANSWERABLE`` last."""
    asks = []
    for k, item in enumerate(qa):
        key = hashlib.blake2b(f"held-out\x00{record_id}\x00{k}".encode(), digest_size=8).digest()
        options, right = shuffled_choices(item, random.Random(int.from_bytes(key, "big")))
        asks.append((item["question"], options, right))
    return asks


class QAAccuracy(Metric):
    """Held-out caption-to-QA accuracy: the share of the records' multiple-choice questions (their ``qa``) that
    ``judge`` answers right from the caption alone, each question asked once (micro over questions).

    Whatever the training rewards are, so recipes with and without the QA reward are compared on the same questions.
    ``unanswerable``: the share answered "the caption does not say". Records without questions are not scored; a
    failed answer is counted (``failed``), never wrong. No question scored: NaN.
    """

    full_state_update = False

    def __init__(self, judge: Judge, **kwargs):
        super().__init__(**kwargs)
        # a judge that cannot answer multiple-choice questions (the base class's answer_choices) scores nothing
        self.judge = judge if type(judge).answer_choices is not Judge.answer_choices else None
        for key in ("right", "unanswerable", "asked", "failed", "records"):
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, captions: list[str | None], records: list[dict]) -> None:
        requests, expected = [], []  # expected: (right option, the 'does not say' option)
        sums = dict.fromkeys(("right", "unanswerable", "asked", "failed", "records"), 0.0)
        if self.judge is None:
            return
        for caption, record in zip(captions, records, strict=True):
            qa = check_qa(record)
            if not qa:
                continue
            sums["records"] += 1
            for question, options, right in held_out_asks(qa, str(record.get("id", record.get("video", "")))):
                requests.append((caption or "", question, options))
                expected.append((right, len(options) - 1))
        replies = self.judge.answer_choices(requests) if requests else []
        for (choice, _error), (right, cannot_say) in zip(replies, expected, strict=True):
            if choice is None:
                sums["failed"] += 1
                continue
            sums["asked"] += 1
            sums["right"] += float(choice == right)
            sums["unanswerable"] += float(choice == cannot_say)
        for key, value in sums.items():
            setattr(self, key, getattr(self, key) + value)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.asked if self.asked > 0 else torch.tensor(float("nan"), dtype=self.asked.dtype)
        return {k: v.float() for k, v in dict(accuracy=self.right / n, unanswerable=self.unanswerable / n,
                                              failed=self.failed, records=self.records).items()}
