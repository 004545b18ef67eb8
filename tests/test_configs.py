"""Every shipped YAML parses with the real CLI (the run itself is mocked): a renamed or mistyped key fails here."""
import sys
from pathlib import Path

import pytest
import yaml

from vcap import cli

ROOT = Path(__file__).resolve().parent.parent
# `vcap compare` configs name two recipes instead of being one; tests/test_demo.py parses them
COMPARE_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "grpo_config" in yaml.safe_load(p.read_text()))
CONFIGS = sorted(set((ROOT / "configs").rglob("*.yaml")) - set(COMPARE_CONFIGS))
BENCHES = sorted((ROOT / "vcap/benches").glob("*.yaml"))


@pytest.fixture
def parsed(monkeypatch):
    """Run ``vcap.cli.main`` up to the parsed config; nothing is checked on disk, built or run."""
    seen = {}
    monkeypatch.setattr(sys, "argv", ["vcap"])
    monkeypatch.setattr(cli.VcapCLI, "before_instantiate_classes", lambda self: seen.update(
        subcommand=self.subcommand, config=self.config[self.subcommand].as_dict()))
    monkeypatch.setattr(cli.VcapCLI, "instantiate_classes", lambda self: None)
    monkeypatch.setattr(cli.VcapCLI, "_run_subcommand", lambda self, subcommand: seen.update(ran=subcommand))

    def parse(*args):
        seen.clear()
        cli.main(list(map(str, args)))
        return seen
    return parse


def assert_subset(expected, actual, where):
    """Every value the YAML sets arrives in the parsed config (class_path/init_args dicts compared recursively)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing after parsing"
            assert_subset(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(actual, (set, frozenset)):  # e.g. FSDP's auto_wrap_policy
        assert set(expected) == {f"{c.__module__}.{c.__qualname__}" if isinstance(c, type) else c for c in actual}, where
    elif isinstance(expected, list):
        assert len(expected) == len(actual), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_subset(e, a, f"{where}[{i}]")
    else:
        assert (actual == expected or getattr(actual, "name", None) == expected  # enums parse from their names
                or (isinstance(expected, (int, float)) and actual == pytest.approx(expected))), where


def test_every_yaml_is_covered():
    names = {p.relative_to(ROOT).as_posix() for p in CONFIGS + BENCHES}
    assert {"configs/grpo.yaml", "configs/lora.yaml", "configs/demo.yaml", "configs/demo/sft.yaml",
            "vcap/benches/shapes.yaml", "vcap/benches/vdc.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_parses_with_the_cli(parsed, path):
    data = yaml.safe_load(path.read_text())
    overlay = "class_path" not in data.get("model", {})  # e.g. lora.yaml stacks on a recipe
    args = ["fit", "--config", ROOT / "configs/grpo.yaml"] if overlay else ["fit"]
    seen = parsed(*args, "--config", path)
    assert seen["ran"] == "fit"
    for section in ("model", "data", "trainer"):
        if section in data:
            assert_subset(data[section], seen["config"][section], section)


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.stem)
def test_bench_parses_with_the_cli(parsed, path):
    data = yaml.safe_load(path.read_text())
    seen = parsed("validate", "--bench", path.stem, "--model.init_args.name_or_path", "vcap-tiny-sft")
    assert seen["ran"] == "validate"
    data["model"]["init_args"]["name_or_path"] = "vcap-tiny-sft"
    for section in ("model", "data", "trainer"):
        assert_subset(data[section], seen["config"][section], section)


def test_bench_shorthands(parsed):
    seen = parsed("validate", "--bench", "shapes", "--limit", "2")
    assert seen["config"]["data"]["init_args"]["limit"] == 2  # one name for the synthetic and official benches
    seen = parsed("validate", "--bench=dream1k", "--limit=5", "--model.init_args.name_or_path", "Qwen/Qwen2-VL-2B")
    assert seen["config"]["data"]["init_args"]["limit"] == 5
    assert seen["config"]["model"]["init_args"]["name_or_path"] == "Qwen/Qwen2-VL-2B"
    seen = parsed("validate", "--bench", "vdc")  # no model named: a placeholder that the preflight rejects
    assert seen["config"]["model"]["init_args"]["name_or_path"] == cli.MODEL_NOT_SET


def test_short_class_names(parsed):
    seen = parsed("fit", "--model", "GRPOModule", "--data", "ShapesDataModule", "--model.init_args.beta", "0")
    assert seen["config"]["model"]["class_path"] == "vcap.grpo.module.GRPOModule"
    assert seen["config"]["data"]["class_path"] == "vcap.data.datamodule.ShapesDataModule"
    seen = parsed("fit", "--model", "SFTModule", "--data", "BenchDataModule", "--data.init_args.bench", "vdc",
                  "--data.init_args.annotations", "a", "--data.init_args.video_dir", "v")
    assert seen["config"]["model"]["class_path"] == "vcap.methods.sft.SFTModule"
