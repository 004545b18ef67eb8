"""What a user hits first, driven through the CLI: bad option values, odd manifests and videos, all-bad data.
Each mistake is one line naming the flag or file, before anything loads or is written (issue 20)."""
import json
import shutil

import pytest

from tests.test_cli import ROOT, small_shapes, user_error, user_error_in_process, vcap  # noqa: F401  (fixture)
from vcap.data.manifest import read_manifest, records_from_videos

DEMO = ["fit", "--config", ROOT / "configs/demo.yaml"]
RECORD = {"caption": "A red circle moves.", "events": ["the red circle moves"],
          "structure": [{"subject": "circle", "attributes": ["red"], "actions": ["moves"]}]}


def manifest_of(tmp_path, videos, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"video": str(v), **RECORD}) + "\n" for v in videos))
    return path


@pytest.mark.parametrize("flag, value, expected", [
    ("max_completion_length", "0", "--model.init_args.max_completion_length 0: must be at least 1"),
    ("max_completion_length", "-5", "--model.init_args.max_completion_length -5: must be at least 1"),
    ("temperature", "0", "--model.init_args.temperature 0: must be greater than 0"),
    ("learning_rate", "-1", "--model.init_args.learning_rate -1: must be greater than 0"),
    ("beta", "-1", "--model.init_args.beta -1: must be at least 0"),
    ("top_p", "1.5", "--model.init_args.top_p 1.5: must be in (0, 1]"),
])
def test_out_of_range_options_stop_before_anything_loads(user_error_in_process, tmp_path, flag, value, expected):
    (line,) = user_error_in_process(*DEMO, *small_shapes(tmp_path / "shapes"), f"--model.init_args.{flag}", value)
    assert line.startswith(expected), line
    assert not (tmp_path / "shapes").exists()  # not even the synthetic data was built


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused(user_error_in_process, tmp_path, limit):
    (line,) = user_error_in_process("validate", "--bench", "shapes", *small_shapes(tmp_path / "s"), "--limit", limit)
    assert line.startswith(f"--limit (--data.init_args.limit) must be at least 1, got {limit}")


def test_unknown_key_in_a_config_file_gets_a_did_you_mean(user_error_in_process, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_stepz: 3\n")
    (line,) = user_error_in_process(*DEMO, "--config", typo)
    assert line == "unknown option trainer.max_stepz (in a config file); did you mean 'trainer.max_steps'?"


def test_non_utf8_and_empty_manifests_name_the_file(user_error_in_process, tmp_path):
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(json.dumps({"video": "a.mp4", **RECORD}).encode() + b"\n" +
                      '{"video": "caf\u00e9.mp4"}\n'.encode("latin-1"))
    data = ["--data", "CaptionDataModule", "--data.init_args.manifest"]
    (line,) = user_error_in_process(*DEMO, *data, latin)
    assert line.startswith(f"{latin}:2: not UTF-8 text (byte 0xe9 at column 15)")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    (line,) = user_error_in_process(*DEMO, *data, empty)
    assert line.startswith(f"manifest {empty} is empty")


def test_bad_video_error_checks_every_video_before_the_run(user_error_in_process, tmp_path, shapes_manifest):
    good = [r["video"] for r in read_manifest(shapes_manifest)]
    folder = tmp_path / "clips.mp4"
    folder.mkdir()
    manifest = manifest_of(tmp_path, [*good[:3], tmp_path / "gone.mp4", folder])
    args = [*DEMO, "--data", "CaptionDataModule", "--data.init_args.manifest", manifest,
            "--data.init_args.val_manifest", shapes_manifest]
    (line,) = user_error_in_process(*args, "--data.init_args.bad_video", "error")
    assert line == (f"2 of 5 training videos cannot be read, e.g. video not found: {tmp_path / 'gone.mp4'} (id 'gone'); "
                    "fix the manifest, or pass --data.init_args.bad_video skip to run without them")
    manifest = manifest_of(tmp_path, [*good[:3], folder])
    (line,) = user_error_in_process(*args, "--data.init_args.bad_video", "error")
    assert line.startswith(f"1 of 4 training videos cannot be read, e.g. video is a folder, not a file: {folder}")


def test_every_training_video_bad_stops_with_one_line(tmp_path, shapes_manifest):
    """Zero-byte files are refused before the run; videos that only fail to decode stop it after one epoch."""
    empty = [tmp_path / f"empty{i}.mp4" for i in range(2)]
    for path in empty:
        path.write_bytes(b"")
    val = ["--data.init_args.val_manifest", shapes_manifest]
    (line,) = user_error(*DEMO, "--data", "CaptionDataModule", "--data.init_args.manifest",
                         manifest_of(tmp_path, empty), *val, cwd=tmp_path)
    assert line.startswith("every training video is bad: 2 of 2 training videos cannot be read, e.g. video is "
                           f"empty (0 bytes): {empty[0]}")
    corrupt = [tmp_path / f"corrupt{i}.mp4" for i in range(2)]
    for path in corrupt:
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = vcap(*DEMO, "--data", "CaptionDataModule", "--data.init_args.manifest", manifest_of(tmp_path, corrupt),
               *val, "--data.init_args.num_workers", "1", "--trainer.validate_before_fit", "false", cwd=tmp_path,
               check=False, env={"COLUMNS": "400"})  # log lines unwrapped
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("vcap: error:")]
    assert errors == [f"vcap: error: no training video could be decoded in epoch 0 (2 skipped, e.g. cannot decode "
                      f"video {corrupt[1]}: RuntimeError: Error reading {corrupt[1]}...); fix the videos or the "
                      "manifest (--data.init_args.manifest)"], out.stderr[-2000:]
    warnings = [line for line in (out.stdout + out.stderr).splitlines() if "WARNING" in line and str(corrupt[0]) in line]
    assert len(warnings) == 1, warnings  # once, by the step that received the skip (not by the worker as well)
    assert "moov atom" not in out.stdout + out.stderr and "ERROR opening" not in out.stdout + out.stderr


def test_same_file_name_in_two_folders_gets_two_ids(tmp_path, shapes_manifest):
    clip = read_manifest(shapes_manifest)[0]["video"]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(clip, tmp_path / folder / "clip.mp4")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video": v}) + "\n" for v in ("a/clip.mp4", "b/clip.mp4", "a/clip.mp4")))
    assert [r["id"] for r in read_manifest(manifest)] == ["a/clip", "b/clip", "a/clip"]  # a repeat keeps its id
    assert [r["id"] for r in records_from_videos([str(tmp_path / "a"), str(tmp_path / "b")])] == ["a/clip", "b/clip"]
    manifest.write_text("".join(json.dumps({"video": v, "id": "x"}) + "\n" for v in ("a/clip.mp4", "b/clip.mp4")))
    with pytest.raises(ValueError, match="m.jsonl:2: id 'x' is already the id of line 1"):
        read_manifest(manifest)
