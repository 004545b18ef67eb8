"""The demo's reward recipes (configs/demo/rewards/, issue 27 item 6) train as shipped on the demo, each logging its
own rewards; the synthetic clips carry exact questions; CSER by hand."""
import csv
import random

import pytest

from tests.test_cli import ROOT, small_shapes, vcap
from vcap.data.synthetic import ACTIONS, COLORS, SHAPES, SIZES, ShapeSpec, scene_questions
from vcap.rewards import build_reward, parse_completion
from vcap.rewards.qa import QAReward, check_qa

RECIPES = {"escore": ["caption"], "qa": ["qa"], "cser": ["caption"], "qa_escore_normalized": ["caption", "qa"],
           "escore_length_normalized": ["caption", "length"]}


def test_every_reward_recipe_is_listed():
    assert sorted(p.stem for p in (ROOT / "configs/demo/rewards").glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_reward_recipe_trains_two_steps_on_the_demo(tmp_path, recipe):
    out = vcap("fit", "--config", ROOT / "configs/demo.yaml", "--config", ROOT / f"configs/demo/rewards/{recipe}.yaml",
               *small_shapes(tmp_path / "shapes"), "--trainer.max_steps", "2", "--trainer.validate_before_fit",
               "false", "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
               "--model.init_args.num_generations", "2", "--model.init_args.max_completion_length", "24",
               "--data.init_args.batch_size", "2", cwd=tmp_path)
    with open(tmp_path / "runs/demo-grpo/version_0/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"], out.stderr[-2000:]
    for name in RECIPES[recipe]:
        assert all(r.get(f"train/reward/{name}", "") != "" for r in rows), (name, rows[0].keys())
    if "qa" in RECIPES[recipe]:  # the synthetic records carry questions: none is without reference
        assert all(float(r["train/qa_no_reference"] or 0) == 0 for r in rows)
        assert all(0 <= float(r["train/reward/qa/accuracy"]) <= 1 for r in rows)
    if recipe.endswith("normalized"):
        assert all(r.get("train/reward_normalized_abs/caption", "") != "" for r in rows)


def test_scene_questions_are_exact_and_answered_by_a_complete_caption():
    specs = [ShapeSpec("circle", "red", "small", "moves left", 20, 20), ShapeSpec("square", "blue", "large", "grows",
                                                                                   30, 30)]
    qa = check_qa({"id": "x", "qa": scene_questions(specs, random.Random(0))})
    assert len(qa) == 8
    by_question = {q["question"]: q for q in qa}
    assert by_question["What colour is the circle?"]["answer"] == "red"
    assert sorted(by_question["What colour is the circle?"]["options"]) == sorted(COLORS)
    assert sorted(by_question["What size is the blue square?"]["options"]) == sorted(SIZES)
    action = by_question["What does the red circle do?"]
    assert action["answer"] == "moves left" and len(action["options"]) == 4 and set(action["options"]) <= set(ACTIONS)
    assert sorted(by_question["Which shape is blue?"]["options"]) == sorted(SHAPES)
    reward = QAReward(asks=32)
    complete = parse_completion("<think>[]</think><answer>A small red circle moves left. A large blue square "
                                "grows.</answer>")
    vague = parse_completion("<think>[]</think><answer>A red circle moves. A blue square grows.</answer>")
    out = reward([complete, vague], [{"id": "x", "qa": qa}] * 2)
    assert out.scores[0] == 1.0 and 0.3 < out.scores[1] < 1.0  # sizes and the direction are not said


def test_cser_is_precision_plus_recall_by_hand():
    sample = {"caption": "A red circle moves left.", "events": ["the red circle moves left", "the square grows"]}
    # recall: 1 of the 2 events is in the caption; precision: the caption's one event is in the reference: 1 + 0.5
    cser = build_reward("caption", mode="linear", metric="cser")
    out = cser([parse_completion("<think>[]</think><answer>A red circle moves left.</answer>")], [sample])
    assert out.scores.tolist() == [1.5] and out.components["precision"].tolist() == [1.0]
    padded = cser([parse_completion("<think>[]</think><answer>A red circle moves left. A green triangle "
                                    "shrinks.</answer>")], [sample])
    assert padded.scores.tolist() == [1.0]  # recall 0.5 + precision 0.5: padding costs
    with pytest.raises(ValueError, match="'cser' .* needs mode: linear"):
        build_reward("caption", metric="cser")
