"""Video decoding, frame sampling, manifests and the bad-video policy."""
import json

import av
import numpy as np
import pytest

from vcap.data.datamodule import CaptionDataModule, VideoRecords
from vcap.data.manifest import ManifestError, read_manifest, records_from_videos
from vcap.data.video import BadVideoError, FrameSampling, decode_frames
from vcap.errors import UsageError


def test_synthetic_manifest_records(shapes_manifest):
    records = read_manifest(shapes_manifest, "train")
    assert len(records) == 8 and len(read_manifest(shapes_manifest, "val")) == 4
    r = records[0]
    assert set(r) >= {"id", "video", "caption", "structure", "events", "split", "seed"}
    assert len(r["structure"]) == len(r["events"]) in (1, 2)
    for s, e in zip(r["structure"], r["events"]):
        assert s["subject"] in e and s["actions"][0] in e and s["attributes"][0] in r["caption"]


def test_decode_samples_uniform_frames(shapes_manifest):
    video = read_manifest(shapes_manifest)[0]["video"]
    frames, fps = decode_frames(video, FrameSampling(nframes=4))
    assert frames.shape == (4, 56, 56, 3) and frames.dtype == np.uint8 and fps == pytest.approx(4.0)
    assert frames.max() > 100  # a coloured shape is visible


@pytest.mark.parametrize("total, fps, sampling, expected", [
    (8, 4.0, FrameSampling(nframes=8), [0, 1, 2, 3, 4, 5, 6, 7]),
    (100, 25.0, FrameSampling(fps=1.0, min_frames=4, max_frames=32), [0, 33, 66, 99]),  # 4 s -> 4 frames
    (1000, 25.0, FrameSampling(fps=2.0, max_frames=16), list(np.linspace(0, 999, 16).round().astype(int))),
    (3, 30.0, FrameSampling(nframes=5), [0, 1, 1, 2]),  # 5 rounds to the even 4 (as qwen-vl-utils); frames repeat
])
def test_frame_indices(total, fps, sampling, expected):
    assert sampling.indices(total, fps).tolist() == expected


def test_frame_sampling_needs_fps_or_nframes():
    with pytest.raises(ValueError, match="fps or nframes"):
        FrameSampling(fps=None, nframes=None)


def _zero_frame_mp4(path):
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=4)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
    return path


@pytest.fixture
def bad_videos(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    return {"missing": tmp_path / "nope.mp4", "corrupt": corrupt, "empty": empty, "zero": _zero_frame_mp4(tmp_path / "zero.mp4")}


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "zero"])
def test_bad_video_error_names_the_file(bad_videos, kind):
    with pytest.raises(BadVideoError, match=bad_videos[kind].name):
        decode_frames(bad_videos[kind], FrameSampling(nframes=4))


def test_bad_video_policy_skip_and_error(bad_videos, shapes_manifest):
    good = read_manifest(shapes_manifest)[0]
    records = [good] + [{"id": k, "video": str(v)} for k, v in bad_videos.items()]
    items = [VideoRecords(records, FrameSampling(nframes=4), "skip")[i] for i in range(len(records))]
    assert items[0]["frames"] is not None
    assert [it["frames"] is None for it in items[1:]] == [True] * 4
    assert all(it["record"]["id"] in it["error"] or it["record"]["video"] in it["error"] for it in items[1:])
    with pytest.raises(BadVideoError, match="corrupt.mp4.*--data.init_args.bad_video skip"):
        VideoRecords(records, FrameSampling(nframes=4), "error")[2]


def test_datamodule_skips_and_counts_bad_videos_through_worker(tmp_path, tiny_path, shapes_manifest, bad_videos):
    manifest = tmp_path / "m.jsonl"
    good = read_manifest(shapes_manifest, "train")[:2]
    rows = good + [{"id": "bad", "video": str(bad_videos["corrupt"]), "caption": "x"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = CaptionDataModule(manifest=str(manifest), val_manifest=str(manifest), processor=str(tiny_path), batch_size=3,
                           num_workers=1, nframes=4, min_pixels=56 * 56, max_pixels=56 * 56, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["records"]) == 2 and [s["video"] for s in batch["skipped"]] == [str(bad_videos["corrupt"])]
    assert batch["inputs"]["video_grid_thw"].tolist() == [[2, 4, 4], [2, 4, 4]]
    assert batch["inputs"]["pixel_values_videos"].shape == (64, 1176)
    assert (batch["inputs"]["input_ids"][:, -1] != dm.collator.processor.tokenizer.pad_token_id).all()  # left padded

    strict = CaptionDataModule(manifest=str(manifest), processor=str(tiny_path), batch_size=3, num_workers=1, nframes=4,
                               bad_video="error", shuffle=False)
    strict.setup("fit")
    with pytest.raises(BadVideoError, match="corrupt.mp4"):
        next(iter(strict.train_dataloader()))


def test_manifest_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n{"caption": "no video"}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl:2: field 'video' \(path to the video file\) is missing"):
        read_manifest(bad)
    bad.write_text('{"video": "a.mp4", "events": "not a list"}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl:1: field 'events' must be a list"):
        read_manifest(bad)
    bad.write_text("{oops\n")
    with pytest.raises(ManifestError, match="bad.jsonl:1: not valid JSON"):
        read_manifest(bad)
    with pytest.raises(ManifestError, match="manifest not found.*--data.init_args.manifest"):
        read_manifest(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="bad_video"):
        CaptionDataModule(bad_video="ignore")


GOOD = {"video": "a.mp4", "caption": "A red circle moves.", "events": ["the circle moves"],
        "structure": [{"subject": "circle", "attributes": ["red"], "actions": ["moves"]}]}


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.update(evnts=r.pop("events")), r"m.jsonl:2: unknown field 'evnts'; did you mean 'events'\?"),
    (lambda r: r.update(captoin=r.pop("caption")), r"m.jsonl:2: unknown field 'captoin'; did you mean 'caption'\?"),
    (lambda r: r.update(split="vall"),
     r"m.jsonl:2: field 'split': 'vall' is not one of 'train', 'val'; did you mean 'val'\?"),
    (lambda r: r["structure"][0].update(subjcet=r["structure"][0].pop("subject")),
     r"m.jsonl:2: unknown field 'structure\[0\].subjcet'; did you mean 'subject'\?"),
    (lambda r: r["structure"][0].update(actions="moves"), r"m.jsonl:2: field 'structure\[0\].actions' must be a list"),
    (lambda r: r.update(structure={"subject": "circle"}), r"m.jsonl:2: field 'structure'.*list of"),
])
def test_manifest_typos_fail_at_load_with_did_you_mean(tmp_path, change, expected):
    bad = json.loads(json.dumps(GOOD))
    change(bad)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError, match=expected):
        read_manifest(manifest, split="train")  # the bad record is checked whatever split is asked for
    with pytest.raises(ManifestError, match=expected):
        read_manifest(manifest, split="val")


def test_manifest_accepts_every_documented_field(tmp_path):
    record = {**GOOD, "id": "c1", "split": "val", "prompt": "Describe.", "seed": 3, "meta": {"source": "mine"}}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(record) + "\n\n")
    (loaded,) = read_manifest(manifest, "val")
    assert loaded["meta"] == {"source": "mine"} and loaded["video"] == str(tmp_path / "a.mp4")
    assert read_manifest(manifest, "train") == []


def test_missing_fields_a_recipe_needs_point_to_annotate(tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [{k: v for k, v in GOOD.items() if k != "events"}] * 3
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(read_manifest(manifest)) == 3  # nothing required: fine
    with pytest.raises(ManifestError, match=r"m.jsonl:1: field 'events' is missing \(and in 2 more of the 3 records\); "
                                            r"the caption reward needs it.*vcap annotate --input .*m.jsonl"):
        read_manifest(manifest, require={"events": "the caption reward"})


def test_check_inputs_reads_manifests_without_a_processor(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n")
    (tmp_path / GOOD["video"]).write_bytes(b"not decoded by the check")  # only the file system is asked
    dm = CaptionDataModule(manifest=str(manifest), processor=str(tmp_path / "no-such-processor"))
    with pytest.raises(UsageError, match="no record of the manifest has split 'val'"):
        dm.check_inputs("validate")
    dm.check_inputs("fit")  # no val records: training without validation is allowed
    with pytest.raises(ManifestError, match="field 'prompt' is missing; the test recipe needs it"):
        dm.check_inputs("fit", {"fit": {"prompt": "the test recipe"}})
    with pytest.raises(UsageError, match="--data.init_args.manifest is not set"):
        CaptionDataModule().check_inputs("fit")
    with pytest.raises(UsageError, match="--data.init_args.predict_videos"):
        CaptionDataModule().check_inputs("predict")


def test_limit_applies_to_validation_records(shapes_manifest):
    dm = CaptionDataModule(manifest=str(shapes_manifest), limit=3)
    assert len(dm.stage_records("validate")["validate"]) == 3 and len(dm.stage_records("fit")["fit"]) == 8


def test_video_paths_resolve_relative_to_manifest_and_folders(shapes_manifest):
    rec = read_manifest(shapes_manifest)[0]
    assert rec["video"].startswith(str(shapes_manifest.parent))
    found = records_from_videos([str(shapes_manifest.parent / "videos")])
    assert len(found) == 12 and found[0]["id"] == "train-00000"
    empty = shapes_manifest.parent / "no-videos-here"
    empty.mkdir(exist_ok=True)
    with pytest.raises(ManifestError, match="no video files"):
        records_from_videos([str(empty)])
