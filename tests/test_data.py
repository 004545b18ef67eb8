"""Video decoding, frame sampling, manifests and the bad-video policy."""
import json

import av
import numpy as np
import pytest
from vcap.data.datamodule import CaptionDataModule, VideoRecords
from vcap.data.manifest import ManifestError, read_manifest, records_from_videos
from vcap.data.video import BadVideoError, FrameSampling, decode_frames


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
    with pytest.raises(BadVideoError, match="corrupt.mp4.*bad_video: skip"):
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
    with pytest.raises(ManifestError, match=r"bad.jsonl:2: field 'video'"):
        read_manifest(bad)
    bad.write_text('{"video": "a.mp4", "events": "not a list"}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl:1: field 'events' must be a list"):
        read_manifest(bad)
    bad.write_text("{oops\n")
    with pytest.raises(ManifestError, match="bad.jsonl:1: not valid JSON"):
        read_manifest(bad)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="bad_video"):
        CaptionDataModule(bad_video="ignore")


def test_video_paths_resolve_relative_to_manifest_and_folders(shapes_manifest):
    rec = read_manifest(shapes_manifest)[0]
    assert rec["video"].startswith(str(shapes_manifest.parent))
    found = records_from_videos([str(shapes_manifest.parent / "videos")])
    assert len(found) == 12 and found[0]["id"] == "train-00000"
    empty = shapes_manifest.parent / "no-videos-here"
    empty.mkdir(exist_ok=True)
    with pytest.raises(ManifestError, match="no video files"):
        records_from_videos([str(empty)])
