"""A real GRPO training step equals an independent re-computation of it, option by option.

``tests/step_probe.py`` fits one step of ``GRPOModule`` on a fixed rollout (fixed completions and rewards, one of
them excluded) with plain SGD and records the accumulated gradient, the gradient after clipping and the weights.
The reference (tests/reference.py) recomputes the same step from scratch: advantages with the statistics module,
log-probs from plain full forwards at the rollout temperature, the loss with its KL term spelled out per loss type,
autograd on that, clipping by the global norm and ``w - lr * g``; for μ > 1 it chains the steps itself, with the
old log-probs frozen at the rollout's weights.
"""
import json
import logging
import statistics
from types import SimpleNamespace

import pytest
import torch

from tests.reference import (assert_close, clip_by_global_norm, global_norm, reference_advantages, reference_logprobs,
                             reference_loss)
from tests.step_probe import G, LENGTHS, MODEL, REWARDS, WIDTH, completions, prompt_batch, rollout_stats, run_step
from vcap.grpo.module import GRPOModule
from vcap.model.loading import load_policy, load_processor
from vcap.rewards import RewardOutput

PROMPTS = [0, 1, 2]

CONFIGS = {
    # μ = 2 with old log-probs, KL, clip-higher, micro-batches that split groups, clipped gradient; a wide lower
    # clip (the first step leaves some disfavoured tokens' ratios between 0.15 and 0.8, which epsilon's default
    # 0.2 would clip, and the logged clip fraction would show it)
    "grpo-kl-mu2": dict(loss_type="grpo", beta=0.1, temperature=0.7, num_iterations=2, micro_batch_size=4,
                        max_grad_norm=0.5, epsilon=0.85, epsilon_high=0.28, learning_rate=2.0),
    "dapo-hot": dict(loss_type="dapo", beta=0.0, temperature=1.3, top_p=0.9, num_iterations=1, micro_batch_size=2,
                     max_grad_norm=0.0, learning_rate=1.0, engine_stats=False),  # an engine without last_stats
    "dr_grpo-unscaled-mu2": dict(loss_type="dr_grpo", beta=1.0, temperature=0.7, num_iterations=2,
                                 micro_batch_size=5, scale_rewards="none", max_grad_norm=0.05, epsilon=0.1,
                                 learning_rate=4.0),
    "dapo-repeated-mu2": dict(loss_type="dapo", beta=0.04, temperature=0.8, num_iterations=2, micro_batch_size=9,
                              shared_prefix=False, max_grad_norm=0.3, learning_rate=2.0),
    "grpo-lora-kl": dict(lora=True, loss_type="grpo", beta=0.2, temperature=0.7, micro_batch_size=3,
                         max_grad_norm=0.01, learning_rate=1.0),
}


def reference_step(options: dict, indices: list[int], start_weights: dict[str, torch.Tensor]) -> list[dict]:
    """Per optimizer step: the accumulated gradient, the clipped one and the weights after it."""
    from peft import LoraConfig

    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0) if options.get("lora") else None
    model = load_policy(MODEL, peft=peft).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable.keys() == start_weights.keys()
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(start_weights[name])  # the module's random LoRA init; the pretrained weights otherwise
    frozen_reference = load_policy(MODEL).eval()  # the start point; with LoRA, the base model

    processor = load_processor(MODEL)
    prompts = prompt_batch(processor, indices)
    ids, mask = completions(indices, processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id)
    flat = [r for i in indices for r in REWARDS[i]]
    valid = [r is not None for r in flat]
    adv = reference_advantages([r or 0.0 for r in flat], G, options.get("scale_rewards", "group"), valid=valid)
    mask = mask * torch.tensor(valid).unsqueeze(1)
    temperature, beta = options["temperature"], options["beta"]
    eps = options.get("epsilon", 0.2)
    eps_high = options.get("epsilon_high") or eps
    with torch.no_grad():
        old = reference_logprobs(model, prompts, ids, mask, G, temperature)
        ref = reference_logprobs(frozen_reference, prompts, ids, mask, G, temperature) if beta else None
    steps = []
    for _ in range(options.get("num_iterations", 1)):
        model.zero_grad(set_to_none=True)
        logp = reference_logprobs(model, prompts, ids, mask, G, temperature)
        loss = reference_loss(logp, old, ref, adv, mask, options["loss_type"], beta, eps, eps_high, max_len=8)
        loss.backward()
        stats = token_stats(logp.detach(), old, ref, adv, mask, eps, eps_high)
        grads = {n: p.grad.clone() for n, p in trainable.items()}
        clipped = clip_by_global_norm(grads, options["max_grad_norm"])
        with torch.no_grad():
            for n, p in trainable.items():
                p.sub_(options["learning_rate"] * clipped[n])
        steps.append({"grad": grads, "clipped": clipped, "loss": loss.item(), **stats,
                      "weights": {n: p.detach().clone() for n, p in trainable.items()}})
    return steps


def token_stats(logp, old, ref, adv, mask, eps, eps_high) -> dict[str, float]:
    """Share of kept tokens whose ratio bound binds, and their mean k3 KL."""
    clipped = kl = 0.0
    for i, row in enumerate(mask.tolist()):
        for t, kept in enumerate(row):
            if not kept:
                continue
            ratio = float(torch.exp(logp[i, t] - old[i, t]))
            clipped += (adv[i] > 0 and ratio > 1 + eps_high) or (adv[i] < 0 and ratio < 1 - eps)
            if ref is not None:
                d = float(ref[i, t] - logp[i, t])
                kl += torch.exp(torch.tensor(d)).item() - d - 1
    tokens = float(mask.sum())
    return {"clip_fraction": clipped / tokens, "kl": kl / tokens}


def assert_same_tensors(got: dict, want: dict, what: str, rel: float = 2e-4) -> None:
    assert got.keys() == want.keys(), what
    for name in want:
        assert_close(got[name], want[name], f"{what} {name}", rel=rel)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_equals_the_reference(tmp_path, name):
    options = CONFIGS[name]
    torch.manual_seed(0)
    got = run_step(options, PROMPTS, tmp_path)
    want = reference_step(options, PROMPTS, got["before"])
    mu = options.get("num_iterations", 1)
    assert got["temperatures"] == [options["temperature"]]  # the rollout is sampled at the configured temperature
    assert all(got["rollout_call_ok"].values()), got["rollout_call_ok"]  # and with the module's other settings
    assert got["has_reference_copy"] == (options["beta"] != 0 and not options.get("lora")) and got["reference_frozen"]
    assert len(got["applied"]) == len(want) == mu
    for k, step in enumerate(want):
        assert_same_tensors(got["local"][k], step["grad"], f"step {k} gradient")
        assert_same_tensors(got["applied"][k], step["clipped"], f"step {k} clipped gradient")
    if options["max_grad_norm"]:
        assert global_norm(want[0]["grad"]) > 2 * options["max_grad_norm"]  # clipping does bind
    deltas = {n: got["after"][n] - got["before"][n] for n in got["before"]}
    want_deltas = {n: want[-1]["weights"][n] - got["before"][n] for n in got["before"]}
    assert_same_tensors(deltas, want_deltas, "weight change")
    if mu > 1:  # the second step moved away from the rollout's weights far enough for the ratio clip to bind
        assert got["metrics"]["train/clip_fraction"] > 0
    engine_stats = [key for key in got["metrics"] if key.startswith("rollout/")]
    assert len(engine_stats) == (4 if options.get("engine_stats", True) else 0)
    assert not (tmp_path / "samples.jsonl").exists()  # log_completions_every 0: none written


def test_logged_metrics_are_the_rollout_and_loss_values(tmp_path, monkeypatch):
    """What the step logs, from the fixed table: rewards, lengths, truncation, and the loss, KL and clip fraction
    of both optimizer steps (averaged), as the reference computes them; how each merges over ranks; the reward on
    the progress bar only; and the samples file."""
    import vcap.grpo.module

    options = CONFIGS["grpo-kl-mu2"]
    exchanged, real_all_ranks = [], vcap.grpo.module.all_ranks
    monkeypatch.setattr(vcap.grpo.module, "all_ranks",
                        lambda tallies: exchanged.append(tallies) or real_all_ranks(tallies))
    torch.manual_seed(0)
    # every 3rd rollout: the first is written (the step counter is 2 after its two optimizer steps)
    got = run_step(dict(options, log_completions_every=3), PROMPTS, tmp_path)
    want = reference_step(options, PROMPTS, got["before"])
    metrics = got["metrics"]
    flat = [r or 0.0 for i in PROMPTS for r in REWARDS[i]]  # an excluded sample scores 0 in its group
    used = [r for i in PROMPTS for r in REWARDS[i] if r is not None]  # the rewards the update used
    groups = [flat[g:g + G] for g in range(0, len(flat), G)]
    lengths = [n for i in PROMPTS for n in LENGTHS[i]]
    expected = {
        "train/reward": statistics.fmean(used),
        "train/reward_std": statistics.fmean(statistics.stdev(g) for g in groups),
        "train/frac_reward_zero_std": 0.0,
        "train/completion_length": statistics.fmean(lengths),
        "train/clipped_completions": sum(n == WIDTH for n in lengths) / len(lengths),  # no EOS: cut by the budget
        "train/reward_failures": 0.0,
        "train/judge_failures": 0.0,
        "train/lr": options["learning_rate"],
        **{f"rollout/{key}": value for key, value in rollout_stats(PROMPTS).items()},
        "data/skipped_videos": 0.0,
        # the table marks its None excluded but not failed (unknown): its own column keeps the 0 it returned
        "train/reward/tests.step_probe:TableReward": statistics.fmean(flat),
        **{f"train/{key}": statistics.fmean(step[key] for step in want) for key in ("loss", "kl", "clip_fraction")},
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert want[0]["clip_fraction"] == 0 < want[1]["clip_fraction"]  # on-policy at first, clipped after a step
    timings = {"step/passes_seconds", "step/reward_wait_seconds"}  # durations: present, not comparable
    assert all(metrics[key] >= 0 for key in timings)
    assert set(metrics) == set(expected) | {"reward"} | timings
    assert got["progress_bar"] == {"reward": pytest.approx(expected["train/reward"])}  # the only number shown there
    assert "reward" not in got["logged"] and set(got["logged"]) == set(expected) | timings
    merged_by = {key: tally.reduce for key, tally in exchanged[-1].items() if tally.reduce != "mean"}
    assert merged_by == {"train/reward_failures": "sum", "train/judge_failures": "sum", "data/skipped_videos": "sum",
                         "rollout/seconds": "max", "rollout/decode_steps": "max", "rollout/tokens_per_s": "sum",
                         "step/passes_seconds": "max", "step/reward_wait_seconds": "max"}
    # the first 4 samples of the rollout, written once per rollout (after both optimizer steps)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["id"], s["reward"], s["failure"]) for s in samples] == [
        (2, "p0", 1.0, None), (2, "p0", 0.0, None), (2, "p0", 0.5, None), (2, "p1", pytest.approx(0.2), None)]
    assert all(isinstance(s["completion"], str) and s["completion"] for s in samples)


def test_a_step_whose_whole_batch_was_skipped_logs_nothing_else_and_the_bad_epoch_says_why(tmp_path):
    """The no-data branch of training_step (it still joins the ranks' metric exchange with the skip count); an
    epoch without a single decodable video then stops with one line naming the cause."""
    from vcap.methods.policy import AllVideosBadError

    skipped = [{"video": "p8.mp4", "error": "moov atom not found"}, {"video": "p9.mp4", "error": "no frames"}]
    with pytest.raises(AllVideosBadError, match=r"^no training video could be decoded in epoch 0 \(2 skipped, e\.g\. "
                                                r"no frames\); fix the videos or the manifest"):
        run_step(CONFIGS["grpo-kl-mu2"], [], tmp_path, skipped=skipped)


def test_samples_file_holds_the_first_samples_with_their_failures_and_logs_the_first(tmp_path, caplog):
    """write_samples on a stand-in module (only the run folder and step): hand-written lines, appended per call."""
    module = SimpleNamespace(samples_dir=tmp_path / "run" / "version_3", global_step=6)  # folders not made yet
    rewards = RewardOutput(torch.tensor([0.75, 0.0, 0.5, 1.0, 0.25]), failures=[(1, "judge timed out"), (4, "empty")])
    texts = ["a" * 300, "b", "c", "d", "e"]
    records = [{"id": f"v{i}", "video": f"v{i}.mp4"} for i in range(5)]
    with caplog.at_level(logging.INFO, logger="vcap.grpo.module"):
        GRPOModule.write_samples(module, texts, records, rewards)
    lines = [json.loads(line) for line in (module.samples_dir / "samples.jsonl").read_text().splitlines()]
    assert lines == [{"step": 6, "id": "v0", "reward": 0.75, "completion": "a" * 300, "failure": None},
                     {"step": 6, "id": "v1", "reward": 0.0, "completion": "b", "failure": "judge timed out"},
                     {"step": 6, "id": "v2", "reward": 0.5, "completion": "c", "failure": None},
                     {"step": 6, "id": "v3", "reward": 1.0, "completion": "d", "failure": None}]  # k = 4
    assert [r.getMessage() for r in caplog.records if r.name == "vcap.grpo.module"] == [
        "step 6 sample (reward 0.75): " + "a" * 200]
    module.global_step = 9
    GRPOModule.write_samples(module, texts[3:], records[3:], RewardOutput(torch.tensor([0.5, 0.25])), k=1)
    lines = (module.samples_dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["step"] == 9 and json.loads(lines[-1])["id"] == "v3"


@pytest.mark.parametrize("every, mu, written", [
    (1, 1, [1, 2, 3, 4, 5, 6, 7]),
    (3, 1, [1, 4, 7]),
    (3, 2, [1, 4, 7]),  # counted in rollouts, not optimizer steps
    (2, 4, [1, 3, 5, 7]),
    (0, 1, []),
])
def test_samples_are_written_for_the_first_rollout_then_every_nth(every, mu, written):
    from vcap.grpo.module import samples_due

    # asked after each rollout's mu optimizer steps: rollout r (from 1) is asked at global step r * mu
    assert [r for r in range(1, 8) if samples_due(r * mu, mu, every)] == written
