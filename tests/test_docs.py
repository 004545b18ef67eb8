"""The docs build with ``mkdocs build --strict``: a broken link or a page missing from the nav fails the suite."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(root / "mkdocs.yml"),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=120)


def test_docs_build_strictly(tmp_path):
    run = build(ROOT, tmp_path / "site")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site/architecture/index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs/architecture.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    run = build(copy, tmp_path / "site")
    assert run.returncode != 0 and "missing.md" in run.stderr


def test_readme_links_to_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    assert [p for p in pages if f"](docs/{p})" not in readme] == []
    assert len(readme.splitlines()) <= 220  # a guide, not the reference
