"""``vcap compare --recipes`` (issue 27 item 6): reward recipes side by side from one warm start, each held-out column
with QA accuracy whatever the recipe trains; the held-out QA metric by hand; the shipped comparison config."""
import json
import statistics

import pytest
import torch
import yaml

from tests.test_cli import ROOT, vcap
from vcap.judges.base import Judge
from vcap.judges.lexical import LexicalJudge
from vcap.methods.metrics import QAAccuracy, held_out_asks
from vcap.rewards.qa import UNANSWERABLE


def tiny_grpo(tmp_path) -> None:
    grpo = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    grpo["model"]["init_args"].update(num_generations=2, max_completion_length=48, max_new_tokens=48)
    grpo["data"]["init_args"].update(root=str(tmp_path / "shapes"), num_train=8, num_val=4, num_workers=0,
                                     batch_size=2, val_batch_size=4)
    grpo["trainer"].update(max_steps=2, val_check_interval=2, log_every_n_steps=1)
    grpo["trainer"].pop("callbacks")
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(grpo))
    for name in ("escore", "qa"):
        (tmp_path / f"{name}.yaml").write_text((ROOT / f"configs/demo/rewards/{name}.yaml").read_text())


def test_recipes_side_by_side_with_qa_accuracy_resumed_and_never_mixed(tmp_path):
    tiny_grpo(tmp_path)
    args = ("compare", "--grpo_config", "grpo.yaml", "--recipes", "[escore.yaml, qa.yaml]", "--seeds", "[0, 1]",
            "--output", "cmp")
    out = vcap(*args, cwd=tmp_path)
    assert "reward recipes on grpo.yaml" in out.stdout and "qa_accuracy" in out.stdout
    result = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert result["complete_seeds"] == [0, 1]
    judges = result["metric_judges"]  # one judge scored every column's held-out metrics
    assert set(judges) == {"escore", "qa"} and judges["escore"] == judges["qa"]
    assert judges["qa"]["qa_metric_judge"] == {"backend": "lexical"}
    for seed in ("0", "1"):
        run = result["runs"][seed]
        assert set(run) == {"warm start", "escore", "qa"}
        for column in run.values():  # the same held-out metrics for every recipe, QA accuracy included
            assert 0 <= column["qa_accuracy"] <= 1 and "caption_event_f1" in column and "think_f1" in column
            assert column["qa_failed"] == 0
        assert not any(k.startswith("reward") for k in run["warm start"])  # each recipe's own reward: not comparable
        assert run["qa"]["train_steps"] == 2
    # the table is the mean and sample std over the seeds, computed here independently
    for column in ("escore", "qa"):
        values = [result["runs"][s][column]["caption_event_f1"] for s in ("0", "1")]
        cell = result["summary"][column]["caption_event_f1"]
        assert cell["values"] == values
        assert cell["mean"] == pytest.approx(sum(values) / 2)
        assert cell["std"] == pytest.approx(statistics.stdev(values))
    assert (tmp_path / "cmp/compare.png").stat().st_size > 1000
    assert (tmp_path / "cmp/seed1/qa/version_0/metrics.csv").exists()

    # a rerun reuses every finished run; one more seed trains only that seed
    vcap(*args[:-4], "--seeds", "[0, 1, 2]", "--output", "cmp", cwd=tmp_path)
    assert not (tmp_path / "cmp/seed0/escore/version_1").exists()
    assert (tmp_path / "cmp/seed2/escore/version_0").exists()
    again = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert again["runs"]["0"] == result["runs"]["0"] and again["complete_seeds"] == [0, 1, 2]

    # an edited recipe never mixes into the old table
    (tmp_path / "qa.yaml").write_text((tmp_path / "qa.yaml").read_text() + "\n# edited\n")
    refused = vcap(*args, cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "holds a comparison with other config_sha256" in refused.stderr
    # two recipes with one file name would share a column
    (tmp_path / "other").mkdir()
    (tmp_path / "other/qa.yaml").write_text("{}\n")
    twice = vcap("compare", "--grpo_config", "grpo.yaml", "--recipes", "[qa.yaml, other/qa.yaml]", "--output", "c2",
                 cwd=tmp_path, check=False)
    assert twice.returncode != 0 and "two recipes share the file name 'qa'" in twice.stderr


class ScriptedChoices(Judge):
    """Answers from a list, in order; None is a failed answer."""

    name = "scripted"

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []

    def answer_choices(self, requests):
        self.requests += requests
        return [(a, None) if a is not None else (None, "garbage") for a in self.answers[:len(requests)]]


def test_qa_accuracy_by_hand():
    qa = [{"question": "What colour?", "options": ["red", "blue", "green"], "answer": "blue"},
          {"question": "What shape?", "options": ["circle", "square"], "answer": "circle"}]
    records = [{"id": "a", "qa": qa}, {"id": "b"}, {"id": "c", "qa": qa[:1]}]
    asks = {r["id"]: held_out_asks(r["qa"], r["id"]) for r in records if "qa" in r}
    for rid, items in asks.items():  # each ask: the question, its options shuffled, the answer's index, then UNANSWERABLE
        for (question, options, right), item in zip(items, qa):
            assert question == item["question"] and options[right] == item["answer"]
            assert sorted(options[:-1]) == sorted(item["options"]) and options[-1] == UNANSWERABLE
    right = [asks["a"][0][2], asks["a"][1][2], asks["c"][0][2]]
    # a: first right, second "does not say"; b: no questions, not asked; c: a failed answer
    judge = ScriptedChoices([right[0], len(asks["a"][1][1]) - 1, None])
    metric = QAAccuracy(judge)
    metric.update(["cap a", "cap b", None], records)
    assert [r[0] for r in judge.requests] == ["cap a", "cap a", ""]  # no answer block: an empty caption
    assert all(r[2][-1] == UNANSWERABLE for r in judge.requests)
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(1 / 2) and out["unanswerable"] == pytest.approx(1 / 2)
    assert out["failed"] == 1 and out["records"] == 2
    judge.answers = [right[2]]
    metric.update(["cap c"], [records[2]])  # states add up across batches
    assert metric.compute()["accuracy"] == pytest.approx(2 / 3)
    assert metric.compute()["unanswerable"] == pytest.approx(1 / 3)  # a right answer is not "does not say"
    assert held_out_asks(qa, "a") == asks["a"]  # fixed by record and question: every model is asked the same
    orders = {tuple(held_out_asks(qa, f"r{k}")[0][1]) for k in range(20)}
    assert len(orders) > 1  # ... and shuffled per record, so the right answer is not always in one place


def test_qa_accuracy_with_the_lexical_answerer_and_without_questions():
    qa = [{"question": "What colour is the circle?", "options": ["red", "blue", "green"], "answer": "red"},
          {"question": "What size is the red circle?", "options": ["small", "large"], "answer": "small"}]
    metric = QAAccuracy(LexicalJudge())
    metric.update(["A small red circle moves left.", "A video."], [{"id": "x", "qa": qa}] * 2)
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(0.5) and out["unanswerable"] == pytest.approx(0.5)
    empty = QAAccuracy(LexicalJudge())
    empty.update(["A small red circle."], [{"id": "y"}])
    assert empty.compute()["records"] == 0 and torch.isnan(empty.compute()["accuracy"])


def test_the_shipped_reward_comparison_names_every_recipe():
    from jsonargparse import ArgumentParser

    from vcap.cli.compare import compare

    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(compare)
    config = parser.parse_args(["--config", str(ROOT / "configs/demo/reward_compare.yaml")])
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs/demo/rewards").glob("*.yaml"))
    assert sorted(config.recipes) == shipped and config.seeds == [0, 1, 2]
    assert (ROOT / config.grpo_config).is_file()


def test_a_metric_nan_in_some_seed_is_na_never_the_mean_of_the_others(tmp_path):
    from vcap.cli.comparison import nan_to_none, print_table, summarize

    runs = [{"A": nan_to_none({"x": 0.5, "y": float("nan")})}, {"A": {"x": 0.7, "y": 0.9}}]
    assert runs[0]["A"]["y"] is None
    summary = summarize(runs)
    assert summary["A"]["x"]["mean"] == pytest.approx(0.6)
    assert summary["A"]["y"] == {"mean": None, "std": None, "values": [None, 0.9]}
    json.dumps(summary, allow_nan=False)  # plain JSON


def test_recipes_are_refused_before_training_when_they_cannot_compare(tmp_path):
    tiny_grpo(tmp_path)
    (tmp_path / "novalidate.yaml").write_text("trainer:\n  validate_before_fit: false\n")
    out = vcap("compare", "--grpo_config", "grpo.yaml", "--recipes", "[escore.yaml, novalidate.yaml]", "--output",
               "cmp", cwd=tmp_path, check=False)
    assert out.returncode != 0 and "with novalidate.yaml must set trainer.validate_before_fit: true" in out.stderr
    assert not (tmp_path / "cmp/seed0").exists()  # nothing trained first
    empty = vcap("compare", "--grpo_config", "grpo.yaml", "--recipes", "[escore.yaml]", "--seeds", "[]", cwd=tmp_path,
                 check=False)
    assert empty.returncode != 0 and "--seeds: give at least one seed" in empty.stderr


def test_columns_scored_by_different_metric_judges_are_refused():
    from vcap.cli.recipe_compare import check_same_metric_judges

    lexical = {"caption_metric_judge": {"backend": "lexical"}, "qa_metric_judge": {"backend": "lexical"}}
    check_same_metric_judges({"escore": lexical, "qa": dict(lexical)})
    other = {**lexical, "qa_metric_judge": {"backend": "openai", "model": "m"}}
    with pytest.raises(SystemExit, match="escore and qa are scored by different held-out metric judges"):
        check_same_metric_judges({"escore": lexical, "qa": other})
