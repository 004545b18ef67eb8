#!/usr/bin/env bash
# Mutation testing (mutmut 3) of vcap's training math, distributed, reward, scoring and SFT code: each module is
# mutated against its own tests only, in a scratch copy of the work tree, so the tree itself is never touched.
# See docs/mutation.md for the scores and the equivalent survivors.
#
#   scripts/mutation.sh                 # every target below (hours on 2 cores)
#   scripts/mutation.sh grpo_losses     # one or more targets by name
#   scripts/mutation.sh --list          # the targets and their tests
#
# Environment: PYTHON (default .venv/bin/python, mutmut is pip-installed into it when missing), MUTATION_DIR
# (default .mutation/, one folder per target with mutmut's state, survivors.txt and summary.txt), MUTATION_JOBS
# (parallel mutants, default: the number of CPUs), MUTATION_QUICK (non-empty: leave the end-to-end test files out),
# MUTATION_SAMPLE (N: a seeded random sample of N mutants of each target, for end-to-end tests too slow for all).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${MUTATION_DIR:-$ROOT/.mutation}"
JOBS="${MUTATION_JOBS:-$(nproc)}"
MUTMUT_VERSION="3.8.1"

# target  module  its tests (~: end-to-end, left out when MUTATION_QUICK is set, for a run that fits in an hour)
# (vllm_engine.py: its end-to-end tests run in the vLLM venv, in subprocesses mutmut cannot see; only the
# in-process ones of tests/test_engines.py count)
TARGETS="
grpo_losses      vcap/grpo/losses.py     tests/test_losses.py tests/test_loss_reference.py
grpo_logprobs    vcap/grpo/logprobs.py   tests/test_shared_prefix.py~ tests/test_logprob_reference.py
grpo_prefix      vcap/grpo/prefix.py     tests/test_shared_prefix.py~ tests/test_logprob_reference.py
grpo_rollout     vcap/grpo/rollout.py    tests/test_rollout_inputs.py tests/test_shared_prefix.py~ tests/test_logprob_reference.py
grpo_vision      vcap/grpo/vision.py     tests/test_shared_prefix.py~ tests/test_logprob_reference.py tests/test_vision_features.py
grpo_stats       vcap/grpo/stats.py      tests/test_rollout_stats.py
grpo_decode      vcap/grpo/decode.py     tests/test_decode.py tests/test_graph_decode.py tests/test_decode_processing.py
grpo_graphs      vcap/grpo/graphs.py     tests/test_graph_decode.py tests/test_decode.py
grpo_decode_attention vcap/grpo/decode_attention.py tests/test_graph_decode.py tests/test_decode.py tests/test_decode_processing.py
grpo_lora_merge  vcap/grpo/lora_merge.py tests/test_graph_decode.py tests/test_lora_merge.py
grpo_engines     vcap/grpo/engines.py    tests/test_engines.py tests/test_graph_decode.py tests/test_decode.py tests/test_engine_options.py
grpo_vllm_engine vcap/grpo/vllm_engine.py tests/test_engines.py tests/test_vllm_adapter.py
grpo_module      vcap/grpo/module.py     tests/test_grpo_module.py~ tests/test_grpo_step_reference.py
distributed      vcap/training/distributed.py     tests/test_distributed.py~ tests/test_distributed_reference.py
rewards_base     vcap/rewards/base.py    tests/test_rewards.py tests/test_reward_values.py
rewards_caption  vcap/rewards/caption.py tests/test_rewards.py tests/test_reward_values.py
rewards_cnscore  vcap/rewards/cnscore.py tests/test_openai_judge.py tests/test_reward_values.py
rewards_format   vcap/rewards/format.py  tests/test_rewards.py tests/test_reward_values.py
rewards_matching vcap/rewards/matching.py tests/test_matching.py tests/test_rewards.py tests/test_reward_values.py
rewards_parsing  vcap/rewards/parsing.py tests/test_rewards.py tests/test_reward_values.py tests/test_parsing_values.py
rewards_think    vcap/rewards/think.py   tests/test_rewards.py tests/test_matching.py tests/test_reward_values.py tests/test_think_scorer.py
bench_scoring    vcap/bench/scoring.py   tests/test_bench_scoring.py tests/test_bench_scoring_values.py
sft              vcap/methods/sft.py             tests/test_sft.py~ tests/test_sft_loss.py
"

if [[ "${1:-}" == "--list" ]]; then
    echo "$TARGETS" | sed '/^$/d'
    exit 0
fi

"$PYTHON" -c "import mutmut" 2>/dev/null || "$PYTHON" -m pip install -q "mutmut==$MUTMUT_VERSION"

run_target() {
    local name="$1" module="$2"
    shift 2
    local tests=()
    for t in "$@"; do
        if [[ "$t" == *"~" ]]; then  # an end-to-end test file: slow under mutation
            t="${t%"~"}"
            if [[ -n "${MUTATION_QUICK:-}" ]]; then echo "  ($t is end-to-end: left out under MUTATION_QUICK)"; continue; fi
        fi
        if [[ -f "$ROOT/$t" ]]; then tests+=("$t"); else echo "  ($t does not exist here: skipped)"; fi
    done
    if [[ ${#tests[@]} -eq 0 ]]; then echo "== $name: no tests, skipped"; return 0; fi
    local dir="$OUT/$name"
    rm -rf "$dir" && mkdir -p "$dir"
    # the work tree as git sees it (new files included, ignored ones not)
    (cd "$ROOT" && git ls-files -co --exclude-standard -- vcap tests setup.cfg pyproject.toml) |
        (cd "$ROOT" && xargs cp --parents -t "$dir")
    "$PYTHON" "$ROOT/scripts/mutation_prepare.py" "$dir/$module"
    {
        echo
        echo "[tool.mutmut]"
        echo "source_paths = [\"vcap\"]"
        echo "only_mutate = [\"$module\"]"
        printf 'pytest_add_cli_args_test_selection = [%s]\n' "$(printf '"%s", ' "${tests[@]}")"
        # tests marked slow run vcap in subprocesses (torchrun, the CLI), where mutmut can neither switch mutants
        # on nor see what they cover; tests marked traces run torch.compile / dynamo, which cannot trace mutmut's
        # trampolines; -n 0: in mutmut's process, not setup.cfg's parallel workers
        echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not slow and not traces", "-n", "0"]'
        echo 'process_isolation = "forkserver"'  # torch is not fork-safe after its thread pools started
        echo 'use_git_change_detection = false'
        # a forked test run loads its fixtures (models) again, which the timing run did once for all tests
        echo 'timeout_constant = 5.0'
    } >> "$dir/pyproject.toml"
    echo "== $name: $module against ${tests[*]}"
    local start=$SECONDS
    local sample=()
    if [[ -n "${MUTATION_SAMPLE:-}" ]]; then
        # a seeded random sample of the mutants, for tests too slow to run for every one: a first mutmut run
        # generates the mutants and records what the tests cover, then stops at a name that matches none
        (cd "$dir" && HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 "$PYTHON" -m mutmut run "no-such-mutant" > generate.log 2>&1) || true
        mapfile -t sample < <("$PYTHON" "$ROOT/scripts/mutation_prepare.py" --sample "$MUTATION_SAMPLE" "$dir/mutants/$module" "$module")
        [[ ${#sample[@]} -gt 0 ]] || { echo "  no mutants found to sample, see $dir/generate.log"; return 1; }
        echo "  a sample of ${#sample[@]} mutants (MUTATION_SAMPLE)"
    fi
    (cd "$dir" && HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 "$PYTHON" -m mutmut run --max-children "$JOBS" "${sample[@]}" > run.log 2>&1) ||
        { echo "  mutmut failed, see $dir/run.log"; tail -20 "$dir/run.log"; return 1; }
    (cd "$dir" && "$PYTHON" -m mutmut export-cicd-stats > /dev/null 2>&1 && "$PYTHON" -m mutmut results > survivors.txt 2>&1
        for m in $(sed -n 's/^ *\([^ :]*\): survived$/\1/p' survivors.txt); do "$PYTHON" -m mutmut show "$m"; done \
            > survivors.diff 2>&1)
    "$PYTHON" - "$dir" "$name" "$module" "$((SECONDS - start))" "${#sample[@]}" <<'EOF' | tee "$dir/summary.txt"
import json, sys
from pathlib import Path
d, name, module, seconds, sampled = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
s = json.loads((Path(d) / "mutants" / "mutmut-cicd-stats.json").read_text())
judged = s["killed"] + s["survived"] + s.get("timeout", 0) + s.get("suspicious", 0) + s.get("no_tests", 0)
killed = s["killed"] + s.get("timeout", 0)
score = 100.0 * killed / judged if judged else 100.0
print(f"{name:17s} {module:26s} mutants {s['total']:4d}  killed {killed:4d} (timeouts {s.get('timeout', 0)})  "
      f"survived {s['survived']:3d}  no tests {s.get('no_tests', 0):3d}  score {score:5.1f}%  ({seconds} s)"
      + (f"  [a sample of {sampled}]" if sampled else ""))
EOF
}

selected=("$@")
status=0
while read -r name module tests; do
    [[ -z "$name" ]] && continue
    if [[ ${#selected[@]} -gt 0 && ! " ${selected[*]} " == *" $name "* ]]; then continue; fi
    # shellcheck disable=SC2086
    run_target "$name" "$module" $tests || status=1
done <<< "$TARGETS"
echo "survivors: $OUT/<target>/survivors.txt (mutmut show NAME in $OUT/<target> prints a diff)"
exit $status
