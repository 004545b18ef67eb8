"""The ``openai`` judge against a real OpenAI-compatible server (llama-cpp-python + SmolLM2-135M-Instruct GGUF),
not a scripted one: ``vcap annotate`` and the caption reward get well-formed verdicts end to end because the
robust protocol sends each reply's JSON schema as ``response_format`` and the server constrains decoding to it.

The first run builds llama-cpp-python (see ``tests/real_judge_server.py``); set VCAP_SKIP_REAL_JUDGE=1 to skip.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from vcap.judges import build_judge
from vcap.judges.base import VERDICTS

# one worker runs every test of the real server: it is installed into this venv and started once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("llama-judge"),
              pytest.mark.skipif(os.environ.get("VCAP_SKIP_REAL_JUDGE") == "1", reason="VCAP_SKIP_REAL_JUDGE=1")]


@pytest.fixture(scope="module")
def server_url():
    from tests.real_judge_server import ensure_llama_cpp_server, llama_server, smollm_gguf

    times = ensure_llama_cpp_server()
    gguf = smollm_gguf()
    start = time.time()
    with llama_server(gguf) as url:
        print(f"\nllama-cpp-python: build {times['build_s']:.0f}s, install {times['install_s']:.0f}s, "
              f"server ready {time.time() - start:.1f}s")
        yield url


def options(url, tmp_path, **kw):
    return {"model": "smollm2", "base_url": url, "cache": str(tmp_path / "cache.sqlite"), "max_retries": 1,
            "timeout": 120, "concurrency": 2, "max_tokens": 256, **kw}


def test_entailment_verdicts_are_well_formed(server_url, tmp_path):
    judge = build_judge("openai", **options(server_url, tmp_path))
    requests = [("A red ball rolls across a wooden floor. A dog chases it.", ["a ball rolls", "a dog chases the ball",
                                                                              "a cat sleeps"]),
                ("A woman opens a window and waves.", ["a woman waves"])]
    start = time.time()
    out = judge.entail_many(requests)
    print(f"\n{judge.calls} calls in {time.time() - start:.1f}s; response_format {judge.describe()['response_format']}")
    assert judge.describe()["response_format"] in ("json_schema", "json_object")  # the server took a schema form
    for (_, hyps), result in zip(requests, out):
        assert result.error is None and len(result.verdicts) == len(hyps) and set(result.verdicts) <= set(VERDICTS)
    assert judge.calls == len(requests)  # constrained output: no re-asks


def test_vcap_annotate_end_to_end(server_url, tmp_path):
    rows = [{"id": "a", "video": "a.mp4", "caption": "A man picks up a red cup and drinks from it."},
            {"id": "b", "video": "b.mp4", "caption": "Two children run across a park and kick a ball."}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = subprocess.run([sys.executable, "-m", "vcap.cli", "annotate", "--input", str(tmp_path / "in.jsonl"),
                             "--output", str(tmp_path / "out.jsonl"), "--judge_options",
                             json.dumps(options(server_url, tmp_path))],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for row in out:
        assert isinstance(row["events"], list) and all(isinstance(e, str) for e in row["events"])
        assert isinstance(row["structure"], list)
        assert all(set(s) >= {"subject", "attributes", "actions"} for s in row["structure"])


def test_caption_reward_end_to_end(server_url, tmp_path):
    from vcap.rewards import build_reward, parse_completion

    sample = {"id": "s", "events": ["a man picks up a cup", "a man drinks"],
              "caption": "A man picks up a cup and drinks from it."}
    completions = [parse_completion("<think>[]</think><answer>A man picks up a cup and drinks.</answer>"),
                   parse_completion("<think>[]</think><answer>A dog sleeps on a sofa.</answer>")]
    reward = build_reward("caption", mode="linear", judge="openai", judge_options=options(server_url, tmp_path))
    out = reward(completions, [sample, sample])
    assert not out.failures, out.failures
    assert all(0.0 <= s <= 1.0 for s in out.scores.tolist())


def test_qa_reward_and_question_making_end_to_end(server_url, tmp_path):
    """The QA reward and ``vcap annotate --fields '[qa]'`` through the real server: every answer names an option
    (constrained output), every question written passes the manifest's checks, and made = kept + dropped."""
    import re

    from vcap.rewards import build_reward, parse_completion
    from vcap.rewards.qa import check_qa

    qa = [{"question": "What colour is the cup?", "options": ["red", "blue", "green"], "answer": "red"},
          {"question": "What does the man do?", "options": ["drinks", "sleeps", "runs"], "answer": "drinks"}]
    sample = {"id": "s", "qa": qa}
    completions = [parse_completion("<think>[]</think><answer>A man picks up a red cup and drinks.</answer>"),
                   parse_completion("<think>[]</think><answer>A video.</answer>")]
    reward = build_reward("qa", judge="openai", judge_options=options(server_url, tmp_path), asks=4)
    out = reward(completions, [sample, sample])
    assert not out.failures, out.failures
    assert all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in out.scores.tolist())

    rows = [{"id": "a", "video": "a.mp4", "caption": "A man picks up a red cup and drinks from it.",
             "events": ["a man picks up a red cup", "the man drinks from the cup"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = subprocess.run([sys.executable, "-m", "vcap.cli", "annotate", "--input", str(tmp_path / "in.jsonl"),
                             "--output", str(tmp_path / "out.jsonl"), "--fields", "[qa]", "--questions", "2",
                             "--judge_options", json.dumps(options(server_url, tmp_path))],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    counts = {k: int(v) for k, v in re.findall(r"│ (qa_questions_\w+)\s+│\s+(\d+) │", result.stderr)}
    assert counts["qa_questions_made"] == sum(v for k, v in counts.items() if k != "qa_questions_made"), counts
    if result.returncode == 0:
        (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        check_qa(row)  # whatever was kept is a well-formed question
        assert counts["qa_questions_kept"] == len(row.get("qa") or [])
    else:  # SmolLM2-135M mostly copies the reply template ("options": ["...", "..."]): refused, named, nothing written
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith(
            "vcap: error: vcap annotate: no record could be annotated (1 failed, e.g. a: qa: "), result.stderr[-3000:]
        assert "reply has no well-formed question" in result.stderr and not (tmp_path / "out.jsonl").exists()
