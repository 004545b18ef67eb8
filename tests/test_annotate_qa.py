"""``vcap annotate --fields '[qa]'`` (issue 27 item 3): the judge writes candidate questions from the caption and
events; a candidate is kept only if it is answered right from the caption on 3 of 4 shuffled asks and from a caption
that says nothing on at most 1 of 4. Driven through the CLI against a scripted judge on 127.0.0.1."""
import json
import os
import re
import subprocess
import sys

from tests.judge_server import ScriptedServer
from vcap.rewards.qa import UNANSWERABLE
from vcap.rewards.qa_questions import BLANK

GOOD = {"question": "What colour is the circle?", "options": ["red", "blue", "green"], "answer": "red"}
UNANSWERED = {"question": "How big is the circle?", "options": ["big", "small"], "answer": "small"}
GUESSABLE = {"question": "Which is obvious, day or night?", "options": ["night", "day"], "answer": "day"}
MALFORMED = {"question": "Broken?", "options": ["a", "b"], "answer": "c"}


def judge(body):
    """Writes the four candidates above; answers a question by the option its description names, an 'obvious'
    one right whatever the description, and anything else 'does not say'."""
    text = body["messages"][-1]["content"]
    if "multiple-choice questions about a video that this description" in text:
        assert "Events: the red circle moves left" in text  # questions are made from the caption and the events
        return ("reply", json.dumps({"questions": [GOOD, UNANSWERED, GUESSABLE, MALFORMED]}))
    description = re.search(r"Description:\n(.*?)\n\nQuestion:", text, flags=re.S)[1]
    question = re.search(r"Question: (.*)\n", text)[1]
    options = dict(re.findall(r"^([A-Z])\. (.*)$", text, flags=re.M))
    if "obvious" in question:
        pick = next(k for k, v in options.items() if v == "day")
    else:
        pick = next((k for k, v in options.items() if v != UNANSWERABLE and re.search(rf"\b{v}\b", description)),
                    next(k for k, v in options.items() if v == UNANSWERABLE))
    return ("reply", json.dumps({"choice": pick}))


def annotate(tmp_path, url, *extra):
    opts = json.dumps({"model": "m", "base_url": url, "cache": str(tmp_path / "cache.sqlite"), "max_retries": 0})
    return subprocess.run([sys.executable, "-m", "vcap.cli", "annotate", "--input", str(tmp_path / "in.jsonl"),
                           "--output", str(tmp_path / "out.jsonl"), "--judge_options", opts, *extra],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200"))


def test_annotate_makes_questions_and_keeps_only_those_the_caption_answers(tmp_path):
    rows = [{"id": "c1", "video": "v1.mp4", "caption": "A red circle moves left.", "events": ["the red circle moves left"]},
            {"id": "c2", "video": "v2.mp4"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ScriptedServer(judge) as server:
        run = annotate(tmp_path, server.url, "--fields", "[qa]", "--questions", "4")
        assert run.returncode == 0, run.stderr[-3000:]
        asked_blank = [b for b in server.requests if f"Description:\n{BLANK}\n" in b["messages"][-1]["content"]]
        assert asked_blank  # each candidate is also asked from a caption that says nothing
        calls = len(server.requests)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[0]["qa"] == [GOOD] and "qa" not in out[1]
    counts = dict(re.findall(r"│ (qa_questions_\w+)\s+│\s+(\d+) │", run.stderr))
    assert counts == {"qa_questions_made": "3", "qa_questions_kept": "1", "qa_questions_dropped_unanswered": "1",
                      "qa_questions_dropped_guessable": "1", "qa_questions_dropped_failed": "0"}, run.stderr[-2000:]
    made_by = json.loads((tmp_path / "out.jsonl.made_by.json").read_text())
    assert made_by["key"]["fields"] == ["qa"] and made_by["key"]["questions"] == 4
    with ScriptedServer(judge) as server:  # a second run: every call answered from the cache
        again = annotate(tmp_path, server.url, "--fields", "[qa]", "--questions", "4", "--overwrite", "true")
        assert again.returncode == 0 and not server.requests and calls > 0
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == out


def test_questions_need_a_judge_that_writes_them(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"video": "v.mp4", "caption": "A red circle."}) + "\n")
    run = subprocess.run([sys.executable, "-m", "vcap.cli", "annotate", "--input", str(tmp_path / "in.jsonl"),
                          "--output", str(tmp_path / "out.jsonl"), "--judge", "lexical", "--fields", "[qa]"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == ("vcap: error: vcap annotate: --fields qa needs a judge that writes "
                                                   "questions ('openai' or 'hf'), not 'lexical'")


def test_a_record_whose_questions_are_all_malformed_is_one_named_failure(tmp_path):
    rows = [{"id": "c1", "video": "v1.mp4", "caption": "A red circle moves left.", "events": ["the red circle moves left"]},
            {"id": "c3", "video": "v3.mp4", "caption": "A red circle moves fast.", "events": ["the red circle moves left"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def script(body):
        text = body["messages"][-1]["content"]
        if "multiple-choice questions about a video" in text and "A red circle moves left." in text:
            return ("reply", json.dumps({"questions": [MALFORMED]}))
        return judge(body)

    with ScriptedServer(script) as server:
        run = annotate(tmp_path, server.url, "--fields", "[qa]", "--questions", "4")
    assert run.returncode == 0, run.stderr[-3000:]
    failures = [line for line in run.stderr.splitlines() if "c1: qa:" in line]
    assert len(failures) == 1 and "c1: qa: unparseable reply" in failures[0], run.stderr[-3000:]
    assert "c1: qa: c1: qa:" not in run.stderr  # the record's name once, not once per layer that passed the error on
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "qa" not in out[0] and out[1]["qa"] == [GOOD]
