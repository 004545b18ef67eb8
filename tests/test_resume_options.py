"""``--ckpt_path``: the options given now win over the checkpoint's saved ones; the few a checkpoint fixes (model,
LoRA, model class, which weights train) are refused in one line before anything loads; ``last`` is the run's
checkpoint of the highest step even when ``last.ckpt`` lags it (kill -9).

The demo recipe made small, its caption judge on a scripted OpenAI-compatible server (dotted flags, as a user writes
them), warm-up 0 so the logged ``train/lr`` is the learning rate itself."""
import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.judge_server import ScriptedServer, scripted_judge
from tests.test_cli import ROOT, small_shapes, user_error_in_process, vcap  # noqa: F401  (fixture)
from vcap.training.ckpt_options import FIT_FROZEN, change_problems, frozen_changes, model_options

RUN = Path("runs/demo-grpo/version_0")
LORA = {"class_path": "peft.LoraConfig", "init_args": {"task_type": "CAUSAL_LM", "r": 64, "lora_alpha": 128,
                                                        "lora_dropout": 0.05, "target_modules": None}}


def answer(body):
    return ("reply", scripted_judge(body, entail_word="moves"))


def demo_fit(shapes: Path, url: str | None, *extra) -> list:
    """The small demo fit; its caption judge at ``url`` by dotted flags (None: ``extra`` configures it)."""
    judge = [] if url is None else [
        "--model.init_args.reward_options.caption.judge", "openai",
        "--model.init_args.reward_options.caption.judge_options.base_url", url,
        "--model.init_args.reward_options.caption.judge_options.model", "judge",
        "--model.init_args.reward_options.caption.judge_options.cache", "null"]
    return ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(shapes),
            "--trainer.callbacks.init_args.every_n_train_steps", "1", "--trainer.validate_before_fit", "false",
            "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
            "--model.init_args.warmup_steps", "0", "--model.init_args.num_generations", "2",
            "--model.init_args.max_completion_length", "40", "--data.init_args.batch_size", "2", *judge, *extra]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def one_step(tmp_path_factory, shapes):
    """A demo run of one step (full fine-tuning of vcap-tiny-sft, GRPOModule): its folder."""
    cwd = tmp_path_factory.mktemp("one-step")
    with ScriptedServer(answer) as server:
        vcap(*demo_fit(shapes, server.url, "--trainer.max_steps", "1"), cwd=cwd)
    return cwd


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- the rule, on hand values ----------------------------------------------------------------------------------
def test_frozen_changes_compare_only_what_fixes_the_model():
    saved = {"_class_path": "vcap.grpo.module.GRPOModule", "name_or_path": "vcap-tiny-sft", "peft": None,
             "freeze_vision": False, "learning_rate": 1e-4, "reward_options": {"caption": {"judge": "openai"}}}
    same_model = {**saved, "learning_rate": 0.5, "reward_options": {"caption": {"judge": "lexical"}},
                  "_class_path": "GRPOModule"}  # the short class name is the same class
    assert frozen_changes(saved, same_model, FIT_FROZEN) == []
    other = {**saved, "name_or_path": "vcap-demo", "peft": LORA, "freeze_vision": True,
             "_class_path": "vcap.methods.sft.SFTModule"}
    assert frozen_changes(saved, other, FIT_FROZEN) == [
        ("_class_path", "vcap.grpo.module.GRPOModule", "vcap.methods.sft.SFTModule"),
        ("name_or_path", "vcap-tiny-sft", "vcap-demo"), ("peft", None, LORA), ("freeze_vision", False, True)]
    # validate/predict: the weights must fit the model; the class and trainable set may differ
    assert [k for k, *_ in frozen_changes(saved, other, ("name_or_path", "peft"))] == ["name_or_path", "peft"]
    # LoRA: the adapter's shape counts, its dropout does not; keys only one side knows are not compared
    wider = {**LORA, "init_args": {**LORA["init_args"], "r": 16}}
    dropout = {**LORA, "init_args": {**LORA["init_args"], "lora_dropout": 0.0, "new_option": 1}}
    assert frozen_changes({"peft": LORA}, {"peft": dropout}, ("peft",)) == []
    assert frozen_changes({"peft": LORA}, {"peft": wider}, ("peft",)) == [("peft", LORA, wider)]
    assert frozen_changes({"learning_rate": 1.0}, {}, FIT_FROZEN) == []  # an older checkpoint holds no such key
    assert change_problems("ck.ckpt", "fit", {"peft": LORA}, {"peft": wider}) == [
        "--ckpt_path ck.ckpt: --model.init_args.peft is LoraConfig(r=16) now but LoraConfig(r=64) in the checkpoint; "
        "a resumed run keeps its model: pass the checkpoint's value (the same peft options, e.g. --config "
        "configs/lora.yaml), or drop --ckpt_path to start a new run"]


def test_model_options_reads_the_parsed_model_as_the_checkpoint_stores_it():
    from jsonargparse import Namespace

    parsed = Namespace(class_path="vcap.grpo.module.GRPOModule",
                       init_args=Namespace(name_or_path="m", peft=Namespace(class_path="peft.LoraConfig",
                                                                           init_args=Namespace(r=4))))
    assert model_options(parsed) == {"_class_path": "vcap.grpo.module.GRPOModule", "name_or_path": "m",
                                     "peft": {"class_path": "peft.LoraConfig", "init_args": {"r": 4}}}


# -- what may change -------------------------------------------------------------------------------------------
def test_resume_uses_the_learning_rate_given_now(tmp_path, shapes):
    """Lightning's CLI put the checkpoint's learning rate over the flag, and the restored optimizer and scheduler
    kept the old one even when the flag got through: the resumed step must train at the new one."""
    with ScriptedServer(answer) as server:
        vcap(*demo_fit(shapes, server.url, "--trainer.max_steps", "1"), cwd=tmp_path)
        out = vcap(*demo_fit(shapes, server.url, "--trainer.max_steps", "2", "--model.init_args.learning_rate", "0.5",
                             "--model.init_args.weight_decay", "0.1"), "--ckpt_path", "last", cwd=tmp_path)
    assert "Restoring states from the checkpoint" in out.stdout + out.stderr  # vcap's own checkpoint, safe loader
    assert [(r["step"], float(r["train/lr"])) for r in metrics(tmp_path / RUN)] == [
        ("1", pytest.approx(1e-4)), ("2", 0.5)]
    state = torch.load(tmp_path / RUN / "checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == 2 and state["hyper_parameters"]["learning_rate"] == 0.5
    (group,) = state["optimizer_states"][0]["param_groups"]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (0.5, 0.5, 0.1)
    assert state["lr_schedulers"][0]["base_lrs"] == [0.5]
    # the update itself used them: AdamW's decoupled decay alone shrinks every weight by lr * weight_decay = 5%
    # (at 1e-4 and 0 the weights would move by about 1e-4)
    start = torch.load(tmp_path / RUN / "checkpoints/epoch=0-step=1.ckpt", weights_only=True)["state_dict"]
    moved = max(float((state["state_dict"][k] - w).abs().max() / w.abs().max()) for k, w in start.items()
                if w.abs().max() > 0.1)
    assert moved > 0.04


def judge_config(path: Path, url: str) -> Path:
    """The caption judge as a user keeps it in a recipe file (the whole reward_options mapping)."""
    path.write_text(yaml.safe_dump({"model": {"init_args": {"reward_options": {"caption": {
        "judge": "openai", "mode": "linear", "metric": "f1",
        "judge_options": {"base_url": url, "model": "judge", "cache": None}}}}}}))
    return path


def test_resume_calls_the_judge_at_its_new_url(tmp_path, shapes):
    """The judge moved: the user edits the URL in their recipe file and resumes; Lightning's CLI put the
    checkpoint's reward options (the old URL) over the file's."""
    recipe = tmp_path / "judge.yaml"
    with ScriptedServer(answer) as old:
        vcap(*demo_fit(shapes, None, "--config", judge_config(recipe, old.url), "--trainer.max_steps", "1"),
             cwd=tmp_path)
        before = len(old.requests)
        with ScriptedServer(answer) as new:
            vcap(*demo_fit(shapes, None, "--config", judge_config(recipe, new.url), "--trainer.max_steps", "2"),
                 "--ckpt_path", "last", cwd=tmp_path)
    assert before > 0 and len(old.requests) == before  # the old URL is not called after the resume
    assert new.requests  # the resumed step's caption reward was judged at the new one
    state = torch.load(tmp_path / RUN / "checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["reward_options"]["caption"]["judge_options"]["base_url"] == new.url


# -- what may not change: one line, before anything loads ------------------------------------------------------
def copy_run(one_step: Path, cwd: Path) -> Path:
    shutil.copytree(one_step / "runs", cwd / "runs")
    return RUN / "checkpoints/last.ckpt"


def test_another_model_is_refused_in_one_line(user_error_in_process, tmp_path, one_step, shapes):
    ckpt = copy_run(one_step, tmp_path)
    (line,) = user_error_in_process(*demo_fit(shapes, "http://127.0.0.1:9/v1"), "--ckpt_path", "last",
                                    "--model.init_args.name_or_path", "vcap-tiny")
    assert line == (f"--ckpt_path {ckpt}: --model.init_args.name_or_path is 'vcap-tiny' now but 'vcap-tiny-sft' in "
                    "the checkpoint; a resumed run keeps its model: pass the checkpoint's value "
                    "(--model.init_args.name_or_path vcap-tiny-sft), or drop --ckpt_path to start a new run")


def test_lora_on_a_full_fine_tuning_checkpoint_is_refused_in_one_line(user_error_in_process, tmp_path, one_step,
                                                                      shapes):
    ckpt = copy_run(one_step, tmp_path)
    (line,) = user_error_in_process(*demo_fit(shapes, "http://127.0.0.1:9/v1"), "--config", ROOT / "configs/lora.yaml",
                                    "--ckpt_path", "last")
    assert line == (f"--ckpt_path {ckpt}: --model.init_args.peft is LoraConfig(r=64, lora_alpha=128, "
                    "target_modules=None) now but null in the checkpoint; a resumed run keeps its model: pass the "
                    "checkpoint's value (--model.init_args.peft null), or drop --ckpt_path to start a new run")


def test_no_lora_on_a_lora_checkpoint_is_refused_in_one_line(user_error_in_process, tmp_path_factory, one_step,
                                                             shapes):
    """The reverse: the saved hyperparameters of a LoRA run (as configs/lora.yaml writes them; nothing but them is
    read before the refusal), resumed without configs/lora.yaml; validate refuses it too (the adapters would not
    load into a model without them)."""
    state = torch.load(one_step / RUN / "checkpoints/last.ckpt", weights_only=True)
    state["hyper_parameters"]["peft"] = LORA
    ckpt = tmp_path_factory.mktemp("lora") / "lora.ckpt"  # outside the folder whose files must not change
    torch.save(state, ckpt)
    (line,) = user_error_in_process(*demo_fit(shapes, "http://127.0.0.1:9/v1"), "--ckpt_path", ckpt)
    assert line == (f"--ckpt_path {ckpt}: --model.init_args.peft is null now but LoraConfig(r=64, lora_alpha=128, "
                    "target_modules=None) in the checkpoint; a resumed run keeps its model: pass the checkpoint's "
                    "value (the same peft options, e.g. --config configs/lora.yaml), or drop --ckpt_path to start a "
                    "new run")
    (line,) = user_error_in_process("validate", "--bench", "shapes", "--ckpt_path", ckpt)
    assert line.startswith(f"--ckpt_path {ckpt}: --model.init_args.peft is null now but LoraConfig(r=64")
    assert "the checkpoint's weights belong to that model" in line


# -- last: the highest step of the run ---------------------------------------------------------------------------
def test_last_resumes_from_the_newest_step_when_last_ckpt_lags(tmp_path, shapes):
    """After kill -9 during the write of step 2's checkpoints, last.ckpt can still hold step 1 beside a whole
    epoch=0-step=2.ckpt: resuming from last.ckpt redid step 2 and wrote epoch=0-step=2-v1.ckpt."""
    folder = tmp_path / RUN / "checkpoints"
    with ScriptedServer(answer) as server:
        vcap(*demo_fit(shapes, server.url, "--trainer.max_steps", "2"), cwd=tmp_path)
        shutil.copy(folder / "epoch=0-step=1.ckpt", folder / "last.ckpt")  # the lagging state
        out = vcap(*demo_fit(shapes, server.url, "--trainer.max_steps", "3"), "--ckpt_path", "last", cwd=tmp_path,
                   env={"COLUMNS": "400"})
    (line,) = [line for line in (out.stdout + out.stderr).splitlines() if "Restoring states from" in line]
    assert line.rstrip().endswith(f"{RUN}/checkpoints/epoch=0-step=2.ckpt"), line
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt", "last.ckpt"]  # no -v1
    assert [r["step"] for r in metrics(tmp_path / RUN)] == ["1", "2", "3"]  # step 2 once
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3
