"""Every command the README and docs/ show still works as written (issue 26): each ``vcap`` command parses with the
recipe it names (``--print_config``: renamed flags, moved class paths and missing configs fail here; the data and
models it needs are a GPU's and are not loaded), each benchmark script takes the flags it is shown with, and each
shell script exists and parses. The README's two commands are what ``.ci/run`` runs."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every command line in a ```bash block, continuations joined, comments dropped."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for command in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = command.split(" #")[0].strip()
                if command and not command.startswith("#"):
                    out.append((page.name, command))
    return out


def vcap_args(command: str) -> list[str] | None:
    """The arguments after ``vcap`` (also under torchrun's ``-m vcap.cli`` and ``srun vcap``), placeholders dropped."""
    tokens = shlex.split(command)
    for marker in ("vcap", ".venv/bin/vcap", "vcap.cli"):
        if marker in tokens:
            out = []
            for t in tokens[tokens.index(marker) + 1:]:
                if t == "..." and out and out[-1].startswith("--"):
                    out.append("/data/placeholder")  # '--flag ...': a value the user fills in
                elif t != "..." and not t.startswith("$"):
                    out.append(t)
            return out
    return None


COMMANDS = shown_commands()
VCAP = [(page, c) for page, c in COMMANDS if vcap_args(c) is not None and "pip install" not in c]


def test_the_pages_show_commands_and_the_readme_shows_the_ci_command():
    assert len(VCAP) >= 10
    ci = (ROOT / ".ci/run").read_text().splitlines()[-1]
    assert any(c == ci for page, c in COMMANDS if page == "README.md")


@pytest.mark.parametrize("page, command", VCAP, ids=[f"{p}:{c[:60]}" for p, c in VCAP])
def test_vcap_command_parses_as_shown(page, command, tmp_path):
    args = vcap_args(command)
    if args[0] in ("annotate", "compare"):
        args = [args[0], "--help"]  # their inputs are the user's; the options must exist
        run = subprocess.run([sys.executable, "-m", "vcap.cli", *args], capture_output=True, text=True, cwd=ROOT,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        flags = [t.split("=")[0] for t in vcap_args(command)[1:] if t.startswith("--")]
        assert all(f in run.stdout for f in flags), (flags, run.stdout[-2000:])
        return
    run = subprocess.run([sys.executable, "-m", "vcap.cli", *args, "--print_config"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, f"{page}: {command}\n{run.stderr[-2000:]}"
    assert "model:" in run.stdout


SCRIPTS = [(page, c) for page, c in COMMANDS if re.match(r"(MUTATION_\w+=\S+ )*(python |bash )?(benchmarks|scripts)/", c)]


@pytest.mark.parametrize("page, command", SCRIPTS, ids=[f"{p}:{c[:60]}" for p, c in SCRIPTS])
def test_script_commands_exist_and_take_their_flags(page, command):
    tokens = [t for t in shlex.split(command) if "=" not in t or t.startswith("--")]
    if tokens[0] in ("python", "bash"):
        tokens = tokens[1:]
    script = ROOT / tokens[0]
    assert script.is_file(), f"{page}: {command}"
    if script.suffix == ".sh":
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        return
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    flags = [t.split("=")[0] for t in tokens[1:] if t.startswith("--")]
    assert all(f in run.stdout for f in flags), (command, [f for f in flags if f not in run.stdout])
