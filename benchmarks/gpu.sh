#!/usr/bin/env bash
# Every GPU number of the step-engine and rollout-engine issues, one JSON object per line (bf16, random weights,
# real geometry). Needs a CUDA GPU with >= 80 GB; `pip install trl` adds TRL's GRPOTrainer as the peer.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}"
peer=$(python -c "import importlib.util; print('--peer trl' if importlib.util.find_spec('trl') else '')")
# `pip install vllm` adds engine: vllm beside hf and vcap in the rollout numbers
engines=$(python -c "import importlib.util; print('hf vcap vllm' if importlib.util.find_spec('vllm') else 'hf vcap')")
export VLLM_ENABLE_V1_MULTIPROCESSING=0
python grpo_step.py --shape qwen2-vl-2b --visual_tokens 512 --completion_length 256 --compare $peer
python grpo_step.py --shape qwen2-vl-7b --lora --visual_tokens 512 --completion_length 256 --compare $peer
python grpo_step.py --shape paper --gradient_checkpointing --compare
for g in 8 64; do
  python rollout.py --shape qwen2-vl-2b --visual_tokens 512 --completion_length 256 --num_generations $g --engines $engines --compile
  python rollout.py --shape qwen2-vl-7b --visual_tokens 512 --completion_length 256 --num_generations $g --engines $engines --compile
done
