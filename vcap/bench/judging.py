"""Judge phases of the benchmarks: every call of a phase goes to the judge as one batch (concurrent, cached).

Each function returns per-sample detail dicts (kept in records.jsonl) plus the inputs of the aggregation
in ``vcap.bench.scoring``.
"""
from __future__ import annotations

from vcap.bench.scoring import AutoDQSample, VDCVideo
from vcap.rewards.parsing import parse_completion


def scored_caption(completion: str) -> tuple[str, str | None]:
    """(caption to score, think block): structured-thinking models are scored on their <answer> part."""
    parsed = parse_completion(completion)
    if parsed.answer is not None:
        return parsed.answer, parsed.think
    return completion.strip(), None


def _extract(judge, kind: str, texts: list[str]):
    return judge.extract_events(texts) if kind == "events" else judge.extract_objects(texts)


def judge_autodq(records: list[dict], captions: list[str], judge, kind: str = "events") -> tuple[list[dict], list[AutoDQSample]]:
    """AutoDQ for ``kind`` ('events' or 'objects'): reference items come from the record, or are extracted
    from its reference text when absent; predicted items are extracted from the caption."""
    need_gt = [i for i, r in enumerate(records) if r.get(kind) is None]
    gt_extracted = dict(zip(need_gt, _extract(judge, kind, [records[i]["reference"] for i in need_gt])))
    predicted = _extract(judge, kind, captions)
    details = []
    for i, (record, pred) in enumerate(zip(records, predicted)):
        gt = record.get(kind)
        errors = []
        if gt is None:
            gt = gt_extracted[i].items
            if gt is None:
                errors.append(f"reference {kind}: {gt_extracted[i].error}")
        if pred.items is None:
            errors.append(f"predicted {kind}: {pred.error}")
        details.append({"id": record["id"], "gt": gt, "pred": pred.items, "errors": errors})
    recall_jobs = [i for i, d in enumerate(details) if not d["errors"] and d["gt"]]
    precision_jobs = [i for i, d in enumerate(details) if not d["errors"] and d["pred"]]
    recall = judge.entail_many([(captions[i], details[i]["gt"]) for i in recall_jobs])
    precision = judge.entail_many([(records[i]["reference"], details[i]["pred"]) for i in precision_jobs])
    for d in details:
        d["recall_verdicts"], d["precision_verdicts"] = [], []
    for key, jobs, results in (("recall_verdicts", recall_jobs, recall), ("precision_verdicts", precision_jobs, precision)):
        for i, result in zip(jobs, results):
            details[i][key] = result.verdicts
            if result.verdicts is None:
                details[i]["errors"].append(f"{key}: {result.error}")
    samples = [AutoDQSample(r.get("source", "overall"), d["recall_verdicts"], d["precision_verdicts"],
                            failed=bool(d["errors"])) for r, d in zip(records, details)]
    return details, samples


def judge_vdc(records: list[dict], captions: list[str], judge) -> tuple[list[dict], list[VDCVideo]]:
    """VDCscore: each QA is answered from the caption alone, then graded yes/no and 0-5 against the answer."""
    flat = [(i, qa) for i, r in enumerate(records) for qa in r["qa"]]
    answers = judge.answer_questions([captions[i] for i, _ in flat], [qa["question"] for _, qa in flat])
    graded_idx = [k for k, (answer, _) in enumerate(answers) if answer is not None]
    grades = dict(zip(graded_idx, judge.grade_answers([flat[k][1]["question"] for k in graded_idx],
                                                      [flat[k][1]["answer"] for k in graded_idx],
                                                      [answers[k][0] for k in graded_idx])))
    details = [{"id": r["id"], "dimension": r["dimension"], "qa": []} for r in records]
    videos = [VDCVideo(r["dimension"], r["video_id"]) for r in records]
    for k, (i, qa) in enumerate(flat):
        answer, error = answers[k]
        grade, grade_error = grades.get(k, (None, None))
        details[i]["qa"].append({"question": qa["question"], "answer": qa["answer"], "predicted": answer,
                                 "grade": list(grade) if grade else None, "error": error or grade_error})
        videos[i].judgements.append(tuple(grade) if grade else None)
    return details, videos
