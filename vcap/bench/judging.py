"""Judge phases of the benchmarks, under the ``official`` or the ``robust`` protocol.

Calls run as concurrent batches across samples, in *stages* that follow the order in which the official
scripts make them for one sample, so that a sample that fails stops making calls exactly where the official
code stops (judge call for judge call):

* AutoDQ (DREAM-1K; CaReBench events then objects): reference items that are not a list are extracted from the
  reference; predicted items are extracted from the caption; then per kind the recall call (the caption against
  the reference items) and the precision call (the reference against the predicted items). Officially every
  call is made even for an empty list, and any failed call fails the whole sample; under ``robust`` empty lists
  need no call and a failure fails only its kind.
* VDCscore: every question of a (video, dimension) is answered from the caption, then graded one question after
  another; officially the first failure skips the video (its later questions are not graded).

Each function returns per-sample detail dicts (kept in records.jsonl) plus the inputs of the aggregation
in ``vcap.bench.scoring``.
"""
from __future__ import annotations

from vcap.bench.scoring import AutoDQSample, VDCVideo
from vcap.rewards.parsing import parse_completion

PROTOCOLS = ("official", "robust")
# Sampling settings the official judge calls pass: none for DREAM-1K / CaReBench (provider defaults); VDC's
# SGLang frontend sends max_new_tokens 256 with its run() defaults, temperature 1 and top_p 1.
OFFICIAL_SAMPLING = {"dream1k": {}, "carebench": {}, "vdc": {"max_tokens": 256, "temperature": 1.0, "top_p": 1.0}}


def scored_caption(completion: str) -> tuple[str, str | None]:
    """(caption to score, think block): structured-thinking models are scored on their <answer> part."""
    parsed = parse_completion(completion)
    if parsed.answer is not None:
        return parsed.answer, parsed.think
    return completion.strip(), None


def _extract(judge, texts: list[str], kind: str, protocol: str, sampling: dict):
    if protocol == "official":
        return judge.extract(texts, kind, "official", sampling)
    return judge.extract_events(texts) if kind == "events" else judge.extract_objects(texts)


def _entail(judge, requests: list[tuple[str, list, str]], kind: str, protocol: str, sampling: dict,
            one_shot_errors: bool = False):
    if protocol == "official":
        return judge.entail(requests, kind, "official", sampling, one_shot_errors)
    return judge.entail_many([(premise, items) for premise, items, _ in requests])


def judge_autodq(records: list[dict], captions: list[str], judge, kinds: tuple[str, ...] = ("events",),
                 protocol: str = "official", sampling: dict | None = None, carebench: bool = False
                 ) -> tuple[list[dict], dict[str, list[AutoDQSample]]]:
    """AutoDQ for each of ``kinds`` ('events', 'objects'): (details per record, {kind: samples}).
    ``carebench``: CaReBench's entailment loop, where a wrong entry count or a transport failure fails the sample
    at once instead of costing one of the 10 tries."""
    official, sampling = protocol == "official", sampling or {}
    state = [{kind: {"gt": r.get(kind), "pred": None, "recall_verdicts": None, "precision_verdicts": None,
                     "errors": []} for kind in kinds} for r in records]
    failed: list[set[str]] = [set() for _ in records]

    def alive(i: int, kind: str) -> bool:
        return not failed[i] if official else kind not in failed[i]

    def needs(stage: str, i: int, kind: str) -> bool:
        s = state[i][kind]
        if stage == "gt":  # the official test: isinstance(events, list); robust: absent or null
            return not isinstance(s["gt"], list)
        if stage == "pred" or official:
            return True
        return bool(s["gt"] if stage == "recall" else s["pred"])

    stages = [("gt", k) for k in kinds] + [("pred", k) for k in kinds] + \
             [(s, k) for k in kinds for s in ("recall", "precision")]
    for stage, kind in stages:
        todo = [i for i in range(len(records)) if alive(i, kind) and needs(stage, i, kind)]
        if stage in ("recall", "precision"):
            for i in range(len(records)):  # an empty list that needs no call (robust) scores 1
                if alive(i, kind) and i not in todo:
                    state[i][kind][f"{stage}_verdicts"] = []
        if not todo:
            continue
        if stage == "gt":
            results = _extract(judge, [records[i]["reference"] for i in todo], kind, protocol, sampling)
        elif stage == "pred":
            results = _extract(judge, [captions[i] for i in todo], kind, protocol, sampling)
        elif stage == "recall":
            results = _entail(judge, [(captions[i], state[i][kind]["gt"], records[i]["reference"]) for i in todo],
                              kind, protocol, sampling, carebench)
        else:
            results = _entail(judge, [(records[i]["reference"], state[i][kind]["pred"], captions[i]) for i in todo],
                              kind, protocol, sampling, carebench)
        for i, result in zip(todo, results):
            value = result.verdicts if stage in ("recall", "precision") else result.items
            slot = {"gt": "gt", "pred": "pred"}.get(stage, f"{stage}_verdicts")
            state[i][kind][slot] = value
            if value is None:
                label = {"gt": f"reference {kind}", "pred": f"predicted {kind}"}.get(stage, f"{stage} ({kind})")
                state[i][kind]["errors"].append(f"{label}: {result.error}")
                failed[i].add(kind)
    samples = {kind: [AutoDQSample(r.get("source", "overall"), state[i][kind]["recall_verdicts"],
                                   state[i][kind]["precision_verdicts"], failed=not alive(i, kind))
                      for i, r in enumerate(records)] for kind in kinds}
    details = [{"id": r["id"], **{kind: state[i][kind] for kind in kinds}} for i, r in enumerate(records)]
    return details, samples


def judge_vdc(records: list[dict], captions: list[str], judge, protocol: str = "official",
              sampling: dict | None = None) -> tuple[list[dict], list[VDCVideo]]:
    """VDCscore: each QA is answered from the caption alone, then graded yes/no and 0-5 against the answer."""
    official, sampling = protocol == "official", sampling or {}
    kwargs = {"protocol": "official", "sampling": sampling} if official else {}
    flat = [(i, qa) for i, r in enumerate(records) for qa in r["qa"]]
    answers = judge.answer_questions([captions[i] for i, _ in flat], [qa["question"] for _, qa in flat], **kwargs)
    details = [{"id": r["id"], "dimension": r["dimension"], "qa": [], "error": None} for r in records]
    videos = [VDCVideo(r["dimension"], r["video_id"]) for r in records]
    for (i, qa), (answer, error) in zip(flat, answers):
        details[i]["qa"].append({"question": qa["question"], "answer": qa["answer"], "predicted": answer,
                                 "grade": None, "error": error})
        if error and official and details[i]["error"] is None:
            details[i]["error"] = f"answer step: {error}"
    if official:  # question by question, as the official loop: the first failure ends the video
        for j in range(max((len(r["qa"]) for r in records), default=0)):
            todo = [i for i, r in enumerate(records) if details[i]["error"] is None and j < len(r["qa"])]
            grades = judge.grade_answers([records[i]["qa"][j]["question"] for i in todo],
                                         [records[i]["qa"][j]["answer"] for i in todo],
                                         [details[i]["qa"][j]["predicted"] for i in todo], **kwargs)
            for i, (grade, error) in zip(todo, grades):
                details[i]["qa"][j]["grade"], details[i]["qa"][j]["error"] = (list(grade) if grade else None), error
                if grade is None:
                    details[i]["error"] = f"grade step, question {j + 1}: {error}"
                else:
                    videos[i].judgements.append(tuple(grade))
        for i, d in enumerate(details):
            videos[i].error = d["error"] or (None if records[i]["qa"] else "no questions (division by zero)")
        return details, videos
    graded = [k for k, (answer, _) in enumerate(answers) if answer is not None]
    grades = dict(zip(graded, judge.grade_answers([flat[k][1]["question"] for k in graded],
                                                  [flat[k][1]["answer"] for k in graded],
                                                  [answers[k][0] for k in graded])))
    position = [0] * len(records)
    for k, (i, _) in enumerate(flat):
        grade, grade_error = grades.get(k, (None, None))
        entry = details[i]["qa"][position[i]]
        position[i] += 1
        entry["grade"], entry["error"] = (list(grade) if grade else None), entry["error"] or grade_error
        videos[i].judgements.append(tuple(grade) if grade else None)
    return details, videos
