"""Step time with the judge answering alongside the fixed log-prob passes (``overlap_rewards``) against the
sequential step, on CPU, with a scripted OpenAI-compatible judge on 127.0.0.1 that answers after a set latency.

The judge runs in a process of its own, as a real judge (a remote server) does: in the trainer's process its
request handling would take the GIL from the training thread and be charged to the overlap.

A first run with an instant judge measures the fixed passes (old and reference log-probs: ``num_iterations 2``,
``beta > 0``); the judge's latency is then set to that time, so the judge wait about equals the passes (unless
``--latency`` is given). Then ``--steps`` rollouts run sequential and ``--steps`` overlapped, on the same model,
data and seed, and one JSON object is printed: per mode the median step, rollout, passes and judge-wait seconds,
and the issue's targets (overlapped step <= rollout + max(passes, judge wait) + 10%, and <= 0.8 x sequential).
The targets are checked twice: on the whole step, whose policy update (the same in both modes, after the
advantages) no overlap can shorten, and on its experience part (rollout, passes and judge wait: what the overlap
reorders), which is what the bound rollout + max(passes, judge wait) describes.

    python benchmarks/judge_overlap.py                      # vcap-tiny-sft on the shapes videos, ~2 minutes
    python benchmarks/judge_overlap.py --steps 5 --latency 0.5
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.judge_server, run from a checkout


def judge_script(latency: float):
    def script(body):
        time.sleep(latency)
        text = body["messages"][-1]["content"]
        items = json.loads(text.split("Statements (JSON list):\n")[1].split("\n\n")[0])
        premise = text.split("Description:\n")[1].split("\n\nStatements")[0].lower()
        return ("reply", json.dumps({"verdicts": ["entailment" if all(w in premise for w in s.lower().split()[1:3])
                                                  else "neutral" for s in items]}))
    return script


class JudgeProcess:
    """The scripted judge in a child process (``--serve LATENCY``); ``url`` once it listens."""

    def __init__(self, latency: float):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", repr(latency)], stdout=subprocess.PIPE,
                                     text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the judge process did not start (printed {self.url!r})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def serve(latency: float) -> None:
    from tests.judge_server import ScriptedServer

    with ScriptedServer(judge_script(latency)) as server:
        print(server.url, flush=True)
        while True:  # until the benchmark kills it
            time.sleep(3600)


class StepClock:
    """Seconds of each training batch (rollout, rewards, passes and updates)."""

    def __init__(self):
        import lightning as L

        outer = self

        class Callback(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                outer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                outer.steps.append(time.perf_counter() - outer.start)
                stats = getattr(pl_module.rollout_engine, "last_stats", {})
                pending = pl_module.pending_rewards
                outer.parts.append({"rollout": stats.get("seconds", float("nan")),
                                    "passes": pl_module.passes_seconds, "judge_wait": pending.wait_seconds})

        self.callback, self.steps, self.parts, self.start = Callback(), [], [], 0.0


def run(args, url: str, overlap: bool, root: Path, steps: int) -> dict:
    import lightning as L
    import torch

    from vcap.data.datamodule import CaptionDataModule
    from vcap.data.synthetic import ShapesSpec, build_shapes_dataset
    from vcap.grpo.module import GRPOModule

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    manifest = build_shapes_dataset(root / "shapes", ShapesSpec(num_train=32, num_val=2, seed=1))
    judge = {"model": "judge", "base_url": url, "cache": None, "max_retries": 0, "concurrency": 64}
    module = GRPOModule(name_or_path="vcap-tiny-sft", num_generations=args.generations, beta=0.04, num_iterations=2,
                        max_completion_length=args.completion_length, micro_batch_size=args.micro_batch_size,
                        shared_prefix=False, log_completions_every=0, learning_rate=1e-4, overlap_rewards=overlap,
                        rewards={"format": 1.0, "caption": 1.0},
                        reward_options={"caption": {"judge": "openai", "judge_options": judge, "mode": "linear"}})
    data = CaptionDataModule(manifest=str(manifest), processor="vcap-tiny-sft", batch_size=args.batch_size,
                             val_batch_size=2, num_workers=0, nframes=args.frames, max_pixels=args.max_pixels)
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", max_steps=2 * (steps + 1), logger=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False,
                        default_root_dir=root / f"run-{overlap}", callbacks=[clock.callback], enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    parts, step_seconds = clock.parts[1:], clock.steps[1:]  # the first rollout warms up
    return {"step": statistics.median(step_seconds),
            **{k: statistics.median(p[k] for p in parts) for k in ("rollout", "passes", "judge_wait")},
            "steps": len(step_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed rollouts per mode (after one warm-up)")
    parser.add_argument("--latency", type=float, default=None, help="judge seconds per request (default: measured "
                                                                    "passes)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--completion_length", type=int, default=48)
    parser.add_argument("--micro_batch_size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max_pixels", type=int, default=112 * 112)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)  # the judge's own process
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        latency = args.latency
        if latency is None:
            with JudgeProcess(0.0) as server:
                latency = run(args, server.url, False, root, 2)["passes"]
        with JudgeProcess(latency) as server:
            sequential = run(args, server.url, False, root, args.steps)
            overlapped = run(args, server.url, True, root, args.steps)
    for mode in (sequential, overlapped):
        mode["experience"] = mode["rollout"] + mode["passes"] + mode["judge_wait"]
    # what the overlap could reach: the sequential step's own parts, unslowed by running side by side
    bound = sequential["rollout"] + max(sequential["passes"], sequential["judge_wait"])
    update = sequential["step"] - sequential["experience"]  # the same in both modes: after the join
    print(json.dumps({
        "benchmark": "judge_overlap", "model": "vcap-tiny-sft", "device": "cpu", "threads": args.threads,
        "generations": args.generations, "batch_size": args.batch_size, "completion_length": args.completion_length,
        "judge_latency_s": round(latency, 4), "sequential": {k: round(v, 4) for k, v in sequential.items()},
        "overlapped": {k: round(v, 4) for k, v in overlapped.items()},
        "overlapped_over_sequential": round(overlapped["step"] / sequential["step"], 3),
        "update_s": round(update, 4),
        "whole_step": {"bound_s": round(1.1 * bound + update, 4),
                       "target_le_rollout_plus_max_passes_judge_plus_10pct": overlapped["step"] <= 1.1 * bound + update,
                       "target_le_0.8x_sequential": overlapped["step"] <= 0.8 * sequential["step"]},
        "experience": {"overlapped_over_sequential": round(overlapped["experience"] / sequential["experience"], 3),
                       "bound_s": round(1.1 * bound, 4),
                       "target_le_rollout_plus_max_passes_judge_plus_10pct": overlapped["experience"] <= 1.1 * bound,
                       "target_le_0.8x_sequential": overlapped["experience"] <= 0.8 * sequential["experience"]},
    }))


if __name__ == "__main__":
    main()
