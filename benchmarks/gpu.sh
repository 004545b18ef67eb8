#!/usr/bin/env bash
# Every GPU number of the rollout and step issues in one short run (one H100/H200, random bf16 weights with the
# real Qwen2-VL geometries): one JSON line per job result, printed (and appended to $VCAP_GPU_LOG) as each job
# ends, so a run that is cut short keeps what finished. Jobs run in order of value (the compiled decode graph
# first, then the GRPO steps, then the profile); each gets what is left of the budget ($VCAP_GPU_BUDGET seconds,
# default 340), so the whole run fits in 6 minutes, model builds included, and a job the budget no longer
# reaches prints {"skipped": "budget spent"}.
#   bash benchmarks/gpu.sh                   # all jobs; `pip install trl` adds TRL's GRPOTrainer as the 2B peer
#   bash benchmarks/gpu.sh rollout-2b step-paper     # only these jobs (names below)
#   VCAP_ROLLOUT_ENGINES="hf vcap-graph vcap-compiled" VCAP_ROLLOUT_G=8 bash benchmarks/gpu.sh rollout-2b
set -uo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_ENABLE_V1_MULTIPROCESSING=0
budget=${VCAP_GPU_BUDGET:-340}
log=${VCAP_GPU_LOG:-/dev/null}
python=${PYTHON:-python3}
peer=$($python -c "import importlib.util; print('--peer trl' if importlib.util.find_spec('trl') else '')")
geometry=(--visual_tokens 512 --completion_length 256)

json_text() { $python -c "import json,sys; print(json.dumps(sys.stdin.read()))"; }

job() {  # job NAME MAX_SECONDS COMMAND...: the command's JSON lines wrapped with the job's name, or what it printed
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS))
  if ((left < 20)); then
    echo "{\"job\": \"$name\", \"skipped\": \"budget spent\"}" | tee -a "$log"; return
  fi
  ((limit > left)) && limit=$left
  local start=$SECONDS out err rc found=0 line
  out=$(mktemp); err=$(mktemp)
  timeout "$limit" "$@" >"$out" 2>"$err"
  rc=$?
  while IFS= read -r line; do
    if [[ $line == \{* ]]; then
      found=1
      echo "{\"job\": \"$name\", \"seconds\": $((SECONDS - start)), \"result\": $line}" | tee -a "$log"
    fi
  done <"$out"
  if ((rc != 0 || found == 0)); then
    echo "{\"job\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - start)), \"stdout_tail\": $(tail -c 400 "$out" | json_text), \"stderr_tail\": $(tail -c 800 "$err" | json_text)}" | tee -a "$log"
  fi
  rm -f "$out" "$err"
}

selected() { (($# == 0)) || [[ " $* " == *" $name "* ]]; }
run_jobs() {  # the jobs named on the command line (all when none), in this order
  local name
  # 2B rollout tokens/s at G = 8 (printed first) and 64: the CUDA graph of the inductor-compiled fused decode step
  # (vcap-compiled; its compilation is the warm-up rollout) against the graph of the eager step (vcap-graph)
  name=rollout-2b; selected "$@" && \
    job $name 200 $python rollout.py --shape qwen2-vl-2b "${geometry[@]}" --num_generations ${VCAP_ROLLOUT_G:-8 64} \
      --engines ${VCAP_ROLLOUT_ENGINES:-vcap-compiled vcap-graph}
  # 2B GRPO step: repeated layout vs the engine (graph rollouts), and TRL's GRPOTrainer when installed
  name=step-2b; selected "$@" && \
    job $name 120 $python grpo_step.py --shape qwen2-vl-2b "${geometry[@]}" ${VCAP_STEP_MODE:---compare} $peer
  # 7B + LoRA r=64 step (rollouts from merged copies)
  name=step-7b-lora; selected "$@" && \
    job $name 100 $python grpo_step.py --shape qwen2-vl-7b --lora "${geometry[@]}" ${VCAP_STEP_MODE:---compare}
  # the paper's geometry (7B LoRA, 32 frames 364x420, 512 new tokens, gradient checkpointing), engine only
  name=step-paper; selected "$@" && \
    job $name 80 $python grpo_step.py --shape paper --gradient_checkpointing --engine
  # the profile of both graphs at G = 8: kernels per decode step (benchmarks/decode_kernels.py counts them on CPU),
  # GPU busy fraction, top kernels, host syncs per step; greedy tokens of both against hf (compiles load from
  # inductor's cache on disk, written by rollout-2b)
  name=profile-2b; selected "$@" && \
    job $name 120 $python rollout.py --shape qwen2-vl-2b "${geometry[@]}" --num_generations 8 \
      --engines vcap-compiled vcap-graph --warmup 0 --check_greedy --profile
  # (-o addopts=: in this process; the GPU machine's python may lack pytest-xdist, which setup.cfg's -n asks for)
  name=gpu-tests; selected "$@" && \
    job $name 90 $python -m pytest -q -m gpu ../tests/test_graph_decode.py -p no:cacheprovider -o addopts=
  return 0
}
run_jobs "$@"
