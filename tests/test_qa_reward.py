"""The caption-to-QA reward (issue 27 item 2): questions drawn with replacement, options shuffled, "does not say"
always offered; the reward is the share answered right; an unparseable answer is a judge failure (n/a), and a
record without questions is n/a, never 1."""
import json
import math
import re
from collections import Counter

import pytest
import torch

from tests.judge_server import ScriptedServer, judge_at
from vcap.errors import UsageError
from vcap.judges import build_judge
from vcap.judges.llm_text import ReplyError, parse_choice
from vcap.rewards import parse_completion
from vcap.rewards.qa import UNANSWERABLE, QAReward, check_qa, plan_asks

QA = [{"question": "What colour is the circle?", "options": ["red", "blue", "green"], "answer": "red"},
      {"question": "Which way does the circle move?", "options": ["left", "right", "up", "down"], "answer": "left"},
      {"question": "What does the square do?", "options": ["grows", "shrinks"], "answer": "grows"}]
RECORD = {"id": "clip7", "qa": QA}


def completion(caption):
    return parse_completion(f"<think>[]</think><answer>{caption}</answer>")


def test_plan_asks_draws_with_replacement_shuffles_and_offers_does_not_say_last():
    plan = plan_asks(QA, 200, 0, "clip7", "A red circle moves left.")
    assert len(plan) == 200
    assert set(Counter(a.question for a in plan)) == {0, 1, 2}  # every question drawn, with replacement
    for ask in plan:
        item = QA[ask.question]
        assert ask.options[-1] == UNANSWERABLE and sorted(ask.options[:-1]) == sorted(item["options"])
        assert ask.options[ask.answer] == item["answer"]
    orders = Counter(a.options for a in plan if a.question == 0)
    assert len(orders) == 6  # all 3! orders of the colour options appear over 200 asks
    assert plan_asks(QA, 200, 0, "clip7", "A red circle moves left.") == plan  # a resumed run asks the same
    assert plan_asks(QA, 200, 1, "clip7", "A red circle moves left.") != plan
    assert plan_asks(QA, 200, 0, "clip8", "A red circle moves left.") != plan
    assert plan_asks(QA, 200, 0, "clip7", "A red circle moves right.") != plan


def test_check_qa_names_the_record_and_entry():
    assert check_qa({"id": "x"}) == [] and check_qa(RECORD) == QA
    bad = [({"qa": {"question": "q"}}, "'qa' must be a list"),
           ({"qa": [{"question": "q", "options": ["a"], "answer": "a"}]}, r"qa\[0\] needs a question and at least 2"),
           ({"qa": [{"question": "q", "options": ["a", "b"], "answer": "c"}]}, r"qa\[0\] answer 'c' is not one"),
           ({"qa": [{"question": "q", "options": ["a", "a"], "answer": "a"}]}, r"qa\[0\] options must differ"),
           ({"qa": [{"question": " ", "options": ["a", "b"], "answer": "a"}]}, r"qa\[0\] needs a question")]
    for record, message in bad:
        with pytest.raises(UsageError, match=r"record r1: " + message):
            check_qa({"id": "r1", **record})


def test_parse_choice_by_hand():
    assert parse_choice('{"choice": "B"}', 3) == 1 and parse_choice('{"choice": "c."}', 3) == 2
    assert parse_choice('{"choice": "A) red"}', 4) == 0
    for reply in ('{"choice": "D"}', '{"choice": "red"}', '{"choice": ""}', '{"choice": 1}', '{"answer": "A"}'):
        with pytest.raises(ReplyError):
            parse_choice(reply, 3)


def test_lexical_answerer_by_hand():
    judge = build_judge("lexical")
    caption = "A red circle moves left. A blue square grows."
    options = ["blue", "red", "green", UNANSWERABLE]
    assert judge.answer_choices([(caption, "What colour is the circle?", options),
                                 (caption, "What colour is the square?", options),
                                 (caption, "What colour is the triangle?", options),  # both colours fit: a tie
                                 (caption, "What does the square do?", ["shrinks", "grows", UNANSWERABLE]),
                                 ("A circle moves.", "Which way does the circle move?",
                                  ["left", "right", UNANSWERABLE])]) == \
        [(1, None), (0, None), (3, None), (1, None), (2, None)]


def test_qa_reward_with_the_lexical_judge_by_hand():
    reward = QAReward(asks=8)
    plan = plan_asks(QA, 8, 0, "clip7", "A red circle moves right.")
    # the caption answers the colour right, the direction wrong, and says nothing of the square
    expected = sum(a.question == 0 for a in plan) / 8
    said_nothing = sum(a.question == 2 for a in plan) / 8
    out = reward([completion("A red circle moves right."), completion("A red circle moves left. A square grows."),
                  parse_completion("no tags"), completion("anything")],
                 [RECORD, RECORD, RECORD, {"id": "no-qa", "qa": []}])
    assert out.scores.tolist() == pytest.approx([expected, 1.0, 0.0, 0.0])
    assert out.components["unanswerable"][0].item() == pytest.approx(said_nothing)
    assert out.no_reference.tolist() == [False, False, False, True]
    assert math.isnan(out.components["accuracy"][3]) and out.failures == [(2, "no <answer> block")]
    assert not out.failed.any()


def _letters(body):
    """(question, options) of a scripted request."""
    text = body["messages"][-1]["content"]
    question = re.search(r"Question: (.*)\n", text)[1]
    options = re.findall(r"^([A-Z])\. (.*)$", text, flags=re.M)
    return question, options


def test_qa_reward_through_an_openai_judge_asks_shuffled_options_and_counts_garbage_as_failure():
    answers = {q["question"]: q["answer"] for q in QA}

    def right(body):
        question, options = _letters(body)
        assert options[-1][1] == UNANSWERABLE
        letter = next(k for k, text in options if text == answers[question])
        return ("reply", json.dumps({"choice": letter}))

    caption = "A red circle moves left."
    with ScriptedServer(right) as server:
        out = QAReward(judge="openai", judge_options={"model": "judge", "base_url": server.url, "cache": None,
                                                      "max_retries": 0}, asks=6)([completion(caption)], [RECORD])
        assert out.scores.tolist() == [1.0] and len(server.requests) == len(set(
            (a.question, a.options) for a in plan_asks(QA, 6, 0, "clip7", caption)))  # repeated asks answered once
    with ScriptedServer(lambda body: ("reply", json.dumps({"choice": "A"}))) as server:
        out = QAReward(judge="openai", judge_options={"model": "judge", "base_url": server.url, "cache": None,
                                                      "max_retries": 0}, asks=6)([completion(caption)], [RECORD])
        # independently of the code under test: the share of asks whose right option the server showed first
        firsts = Counter()
        for body in server.requests:
            question, options = _letters(body)
            firsts[(question, tuple(t for _, t in options))] = options[0][1] == answers[question]
    plan = plan_asks(QA, 6, 0, "clip7", caption)
    assert out.scores.item() == pytest.approx(
        sum(firsts[(QA[a.question]["question"], a.options)] for a in plan) / 6)
    with ScriptedServer(lambda body: ("reply", json.dumps({"choice": "the red one"}))) as server:
        judge = judge_at(server, parse_retries=0)
        reward = QAReward(asks=3, on_failure="exclude")
        reward.judge = judge
        out = reward([completion(caption)], [RECORD])
    assert out.failed.tolist() == [True] and out.excluded.tolist() == [True]
    assert math.isnan(out.components["accuracy"][0])  # unknown, not wrong
    assert "judge failed" in out.failures[0][1] and "option letters A-" in out.failures[0][1]


def test_qa_reward_options_are_checked():
    with pytest.raises(ValueError, match="reward_options.qa.asks must be at least 1"):
        QAReward(asks=0)
    with pytest.raises(ValueError, match="on_failure must be 'zero' or 'exclude'"):
        QAReward(on_failure="skip")
    assert isinstance(QAReward().score([completion("x")], [RECORD]).scores, torch.Tensor)
