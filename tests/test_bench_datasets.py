"""Benchmark loaders on small files written in each official format (our own text) with synthetic videos."""
import json
import shutil

import pytest

from vcap.bench.datasets import BenchDataError, load_carebench, load_dream1k, load_vdc


@pytest.fixture
def videos(tmp_path, shapes_manifest):
    src = sorted((shapes_manifest.parent / "videos").glob("*.mp4"))
    out = tmp_path / "videos"
    out.mkdir()
    return src, out


def test_dream1k_messages_flat_and_hf_formats(tmp_path, videos):
    src, vdir = videos
    for vid, path in zip((101, 102, 103), src):
        shutil.copy(path, vdir / f"{vid}.mp4")
    messages = {"messages": [{"role": "user", "content": [{"type": "video", "video": {"video_file": "<placeholder>"}},
                                                          {"type": "text", "text": "Describe the video in detail."}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "", "reference": "A cat naps."}]}],
                "dataset": "DREAM/videvo", "task": "video/caption", "idx": 0, "vid": 101,
                "extra_info": {"duration": 3.0, "events": ["A cat yawns.", "A cat naps."], "n_events": 2}}
    flat = {"idx": 1, "dataset": "DREAM/youtube", "text": {"prompt": "<video>\nDescribe", "response": "Still room."},
            "video_file": "x", "vid": 102, "extra_info": {"events": []}}
    (tmp_path / "dream.jsonl").write_text(json.dumps(messages) + "\n" + json.dumps(flat) + "\n")
    rows = load_dream1k(tmp_path / "dream.jsonl", vdir)
    assert [(r["id"], r["source"], r["events"]) for r in rows] == [
        ("DREAM/videvo_0", "DREAM/videvo", ["A cat yawns.", "A cat naps."]), ("DREAM/youtube_1", "DREAM/youtube", [])]
    assert rows[0]["reference"] == "A cat naps." and rows[0]["video"].endswith("101.mp4")
    assert rows[0]["prompt"] == "Describe the video in detail."

    hf = [{"idx": "7", "video_file": "103.mp4", "source": "DREAM/movie_animation", "description": "A dog runs.",
           "events": "['A dog runs.']", "n_events": "1"}]
    (tmp_path / "metadata.json").write_text(json.dumps(hf))
    assert load_dream1k(tmp_path / "metadata.json", vdir)[0]["events"] == ["A dog runs."]
    assert len(load_dream1k(tmp_path / "dream.jsonl", vdir, limit=1)) == 1


def test_missing_or_partial_data_says_what_and_where(tmp_path, videos):
    _, vdir = videos
    with pytest.raises(BenchDataError, match=r"expected the annotation file.*huggingface.co/datasets/omni-research"):
        load_dream1k(tmp_path / "nope.jsonl", vdir)
    (tmp_path / "m.json").write_text(json.dumps([{"video": "v_1.mp4", "caption": "x"}]))
    with pytest.raises(BenchDataError, match=r"1 of 1 videos are missing.*v_1.mp4.*MCG-NJU/CaReBench"):
        load_carebench(tmp_path / "m.json", vdir)
    with pytest.raises(BenchDataError, match="expected the camera QA file"):
        load_vdc(tmp_path, vdir)


def test_vdc_records_per_dimension_with_seeded_prompts(tmp_path, videos):
    src, vdir = videos
    for name, path in zip(("abc", "mixkit-dog"), src):
        shutil.copy(path, vdir / f"{name}.mp4")
    qa = tmp_path / "qa"
    qa.mkdir()
    for dim in ("camera", "short"):
        rows = [{"abc": [{"question": f"{dim} q?", "answer": "a", "category": "object"}]},
                {"mixkit-dog": [{"question": "q2?", "answer": "b"}]}, {"abc": [{"question": "dup", "answer": "x"}]}]
        (qa / f"{dim}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = load_vdc(qa, vdir, dimensions=("camera", "short"))
    assert [r["id"] for r in rows] == ["abc/camera", "abc/short", "mixkit-dog/camera", "mixkit-dog/short"]
    assert rows[0]["qa"][0]["question"] == "dup"  # a repeated id keeps its last QA list (the official dict.update)
    again = load_vdc(qa, vdir, dimensions=("camera", "short"))
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in again]  # fixed seed
    assert len(load_vdc(qa, vdir, dimensions=("camera", "short"), limit=1)) == 2


def test_carebench_with_and_without_events(tmp_path, videos):
    src, vdir = videos
    shutil.copy(src[0], vdir / "v_00000030_5.mp4")
    shutil.copy(src[1], vdir / "v_2.mp4")
    meta = [{"video": "v_00000030_5.mp4", "caption": "A man lifts a bar.", "spatial_caption": "s",
             "temporal_caption": "t", "category": "Sports & Exercise", "events": ["A man lifts a bar."],
             "objects": ["There is a bar."]},
            {"video": "v_2.mp4", "caption": "Someone cooks."}]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    rows = load_carebench(tmp_path / "metadata.json", vdir)
    assert rows[0]["id"] == "v_00000030_5" and rows[0]["objects"] == ["There is a bar."]
    assert rows[1]["events"] is None and rows[1]["objects"] is None  # to be extracted by the judge


def test_bad_records_fail_with_file_line_and_field(tmp_path, videos):
    from vcap.bench.schema import RecordError

    src, vdir = videos
    shutil.copy(src[0], vdir / "v_1.mp4")
    good = {"video": "v_1.mp4", "caption": "A man cooks.", "spatial_caption": "s", "extra": {"kept": True}}
    (tmp_path / "m.json").write_text("[\n  " + json.dumps(good) + ",\n  " + json.dumps({"video": "v_1.mp4"}) + "\n]")
    with pytest.raises(RecordError, match=r"m\.json:3: caption: Field required"):
        load_carebench(tmp_path / "m.json", vdir)
    (tmp_path / "m.json").write_text(json.dumps([{**good, "events": "not a list"}]))
    with pytest.raises(RecordError, match=r"m\.json:1: events: Input should be a valid list"):
        load_carebench(tmp_path / "m.json", vdir)
    (tmp_path / "m.json").write_text(json.dumps([good]))  # fields vcap does not read are allowed
    assert load_carebench(tmp_path / "m.json", vdir)[0]["reference"] == "A man cooks."

    bad_dream = {"messages": [{"role": "assistant", "content": [{"type": "text", "reference": "x"}]}],
                 "dataset": "DREAM/a", "idx": 0, "vid": 1, "extra_info": {"events": [1, 2]}}
    (tmp_path / "d.jsonl").write_text("\n" + json.dumps(bad_dream) + "\n")
    with pytest.raises(RecordError, match=r"d\.jsonl:2: extra_info\.events\.0: Input should be a valid string"):
        load_dream1k(tmp_path / "d.jsonl", vdir)
    qa = tmp_path / "qa"
    qa.mkdir()
    (qa / "camera.jsonl").write_text(json.dumps({"v_1": [{"question": "q?"}]}) + "\n")
    with pytest.raises(RecordError, match=r"camera\.jsonl:1: v_1\[0\]: answer: Field required"):
        load_vdc(qa, vdir, dimensions=("camera",))


def test_vdc_prompt_lists_are_as_long_as_the_official_ones_and_seeded(tmp_path, videos):
    from vcap.bench.vdc_prompts import VDC_PROMPTS

    assert {d: len(v) for d, v in VDC_PROMPTS.items()} == {"camera": 16, "short": 16, "background": 16,
                                                            "main_object": 16, "detailed": 24}
    assert all(len(set(v)) == len(v) for v in VDC_PROMPTS.values())
    src, vdir = videos
    qa = tmp_path / "qa"
    qa.mkdir()
    for i, path in enumerate(src[:3]):
        shutil.copy(path, vdir / f"v{i}.mp4")
    (qa / "detailed.jsonl").write_text("".join(json.dumps({f"v{i}": [{"question": "q", "answer": "a"}]}) + "\n"
                                               for i in range(3)))
    first = [r["prompt"] for r in load_vdc(qa, vdir, dimensions=("detailed",))]
    assert first == [r["prompt"] for r in load_vdc(qa, vdir, dimensions=("detailed",))]
    assert all(p in VDC_PROMPTS["detailed"] for p in first)


def test_carebench_frames_are_the_middle_of_each_segment(tmp_path, videos):
    """Hand-computed from CaReBench utils/video.py (sample='middle'): edges = linspace(0, n, k + 1).astype(int),
    index = (start + end - 1) // 2; a clip shorter than k frames repeats its last index."""
    from vcap.bench.frames import SegmentMiddleSampling, segment_middle_indices

    assert segment_middle_indices(4, 10) == [0, 3, 5, 8]  # edges 0 2 5 7 10
    assert segment_middle_indices(4, 3) == [0, 1, 2, 2]
    idx = segment_middle_indices(32, 100)  # edges 0 3 6 9 12 15 18 21 25 ...
    assert len(idx) == 32 and idx[:8] == [1, 4, 7, 10, 13, 16, 19, 22] and idx[-1] == 97
    sampling = SegmentMiddleSampling(None, 32)
    assert sampling.indices(100, 25.0).tolist() == idx

    from vcap.bench.datamodule import BenchDataModule
    dm = BenchDataModule("carebench", "m.json", str(tmp_path), nframes=32, fps=None, frame_sampling="segment_middle")
    assert isinstance(dm.sampling, SegmentMiddleSampling)
