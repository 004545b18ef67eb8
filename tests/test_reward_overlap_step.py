"""The overlapped GRPO step (issue 27 item 1) against its sequential twin, with a scripted judge that answers after a
set latency: the same logged numbers, bit-identical weights, the same judge requests (none scored twice), and the
judge answering while the fixed log-prob passes run (beta > 0 and mu = 2, so both passes exist)."""
import json
import time

import lightning as L
import torch

from tests.judge_server import ScriptedServer
from tests.test_grpo_module import make_data, make_module

LATENCY = 0.3


def judge(arrivals):
    def script(body):
        arrivals.append(time.perf_counter())
        time.sleep(LATENCY)
        text = body["messages"][-1]["content"]
        items = json.loads(text.split("Statements (JSON list):\n")[1].split("\n\n")[0])
        premise = text.split("Description:\n")[1].split("\n\nStatements")[0]
        # deterministic and varied: a statement is entailed when the caption shares its second word
        return ("reply", json.dumps({"verdicts": ["entailment" if s.split()[1:2] and s.split()[1] in premise
                                                  else "neutral" for s in items]}))
    return script


def run(tmp_path, tiny_path, shapes_manifest, overlap):
    arrivals, passes, logged = [], [], []
    with ScriptedServer(judge(arrivals)) as server:
        rewards = {"format": 0.5, "think": 1.0, "caption": 1.0}
        options = {"caption": {"judge": "openai", "mode": "linear", "judge_options": {
            "model": "judge", "base_url": server.url, "cache": None, "max_retries": 0, "concurrency": 16}}}
        torch.manual_seed(0)
        # the warm start writes <answer> blocks, so the caption judge is asked
        module = make_module("vcap-tiny-sft", rewards=rewards, reward_options=options, overlap_rewards=overlap,
                             num_iterations=2, beta=0.1, num_generations=2, max_completion_length=40,
                             learning_rate=1e-3)
        fixed = module.fixed_logprobs

        def timed(rollout):  # passes as long as a large model's: 3 judge latencies
            start = time.perf_counter()
            out = fixed(rollout)
            time.sleep(3 * LATENCY)
            passes.append((start, time.perf_counter()))
            return out

        module.fixed_logprobs = timed
        log = module.log_global
        module.log_global = lambda tallies: (
            logged.append({k: (float(v.total), float(v.count)) for k, v in tallies.items()}), log(tallies))
        # mu = 2 optimizer steps a rollout: max_steps 4 is two rollouts
        trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path / str(overlap),
                            enable_checkpointing=False)
        trainer.fit(module, datamodule=make_data("vcap-tiny-sft", shapes_manifest))
        requests = [json.dumps(b, sort_keys=True) for b in server.requests]
    weights = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    return weights, logged, sorted(requests), arrivals, passes


def test_overlapped_step_equals_the_sequential_one_and_hides_the_judge(tmp_path, tiny_path, shapes_manifest):
    w_seq, log_seq, req_seq, arr_seq, passes_seq = run(tmp_path, tiny_path, shapes_manifest, overlap=False)
    w_ovl, log_ovl, req_ovl, arr_ovl, passes_ovl = run(tmp_path, tiny_path, shapes_manifest, overlap=True)
    assert req_ovl == req_seq and req_seq  # the same judge requests, each sent once
    assert w_ovl.keys() == w_seq.keys()
    assert all(torch.equal(w_ovl[n], w_seq[n]) for n in w_seq)  # bit-identical weights
    timing = ("step/passes_seconds", "step/reward_wait_seconds", "rollout/seconds", "rollout/tokens_per_s")
    for seq, ovl in zip(log_seq, log_ovl, strict=True):
        assert {k: v for k, v in seq.items() if k not in timing} == {k: v for k, v in ovl.items() if k not in timing}
    assert any(v[0] for entry in log_seq for k, v in entry.items() if k == "train/reward/caption")  # the judge scored
    # sequential: every request of a step arrived before that step's passes began
    assert all(max(a for a in arr_seq if a < end) < start for start, end in passes_seq)
    # overlapped: each step's requests went out before its passes ended, and the join waited less than the judge
    for start, end in passes_ovl:
        assert any(start < a < end for a in arr_ovl), (passes_ovl, arr_ovl)
    wait_ovl = [entry["step/reward_wait_seconds"][0] for entry in log_ovl if "step/reward_wait_seconds" in entry]
    wait_seq = [entry["step/reward_wait_seconds"][0] for entry in log_seq if "step/reward_wait_seconds" in entry]
    assert len(wait_ovl) == len(wait_seq) == 2
    assert all(s > LATENCY for s in wait_seq) and all(o < LATENCY / 2 for o in wait_ovl), (wait_ovl, wait_seq)
