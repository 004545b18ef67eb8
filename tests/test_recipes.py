"""Every training recipe in configs/ trains 2 steps as shipped, stacked as the README stacks them, overriding only
the model's size, the data and the accelerator (and the strategy where the recipe needs GPUs). The paper recipe's
judge is an OpenAI-compatible server: here a scripted one on 127.0.0.1, set with a dotted flag as a user would.
(demo.yaml and lora.yaml train in tests/test_cli.py; configs/demo/compare.yaml runs in tests/test_demo.py.)"""
import pytest

from tests.judge_server import ScriptedServer, scripted_judge
from tests.test_cli import ROOT, small_shapes, vcap

TINY_GRPO = ["--model.init_args.name_or_path", "vcap-tiny-sft", "--model.init_args.num_generations", "2",
             "--model.init_args.max_completion_length", "24", "--model.init_args.max_new_tokens", "24"]
SMALL_VIDEOS = ["--data.init_args.num_workers", "0", "--data.init_args.min_pixels", "3136",
                "--data.init_args.max_pixels", "3136", "--data.init_args.min_frames", "4",
                "--data.init_args.max_frames", "4"]
STOPPED = "`Trainer.fit` stopped: `max_steps=2` reached."


@pytest.mark.parametrize("stack, where", [
    ([], []),
    (["--config", ROOT / "configs/grpo_fsdp.yaml"], ["--trainer.strategy", "auto", "--trainer.devices", "1"]),
    (["--config", ROOT / "configs/qlora.yaml"], []),
], ids=["grpo.yaml", "grpo.yaml+grpo_fsdp.yaml", "grpo.yaml+qlora.yaml"])
def test_paper_recipes_train_two_steps(tmp_path, shapes_manifest, stack, where):
    with ScriptedServer(lambda body: ("reply", scripted_judge(body, entail_word="moves"))) as judge:
        out = vcap("fit", "--config", ROOT / "configs/grpo.yaml", *stack, *TINY_GRPO,
                   "--data.init_args.manifest", shapes_manifest, *SMALL_VIDEOS,
                   "--trainer.accelerator", "cpu", *where, "--trainer.max_steps", "2",
                   "--model.init_args.reward_options.caption.judge_options.base_url", judge.url, cwd=tmp_path)
        assert judge.requests  # the caption reward and validation asked the recipe's judge
    assert STOPPED in out.stdout + out.stderr
    assert (tmp_path / "runs/grpo/version_0/checkpoints/last.ckpt").exists()


@pytest.mark.parametrize("recipe, model", [
    ("configs/demo/sft.yaml", []),
    ("configs/demo/sft_human.yaml", ["--model.init_args.name_or_path", "vcap-tiny-sft"]),  # stage 1's export
    ("configs/demo/sft_continue.yaml", []),
], ids=["sft.yaml", "sft_human.yaml", "sft_continue.yaml"])
def test_sft_recipes_train_two_steps(tmp_path, recipe, model):
    out = vcap("fit", "--config", ROOT / recipe, *model, *small_shapes(tmp_path / "shapes"),
               "--data.init_args.batch_size", "2", "--model.init_args.max_new_tokens", "16",
               "--trainer.max_steps", "2", cwd=tmp_path)
    assert STOPPED in out.stdout + out.stderr
