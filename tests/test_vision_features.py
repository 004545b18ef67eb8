"""``encode_videos``: one no-grad encode per step, split per video, only where reusing it is exact."""
import pytest
import torch

from tests.video_batches import prompt_batch
from vcap.grpo.vision import encode_videos, tower_is_frozen
from vcap.model.loading import load_policy, load_processor
from vcap.model.tiny_families import ensure_tiny_family


def frozen(model):
    model.model.visual.requires_grad_(False)
    return model.eval()


def test_features_are_the_towers_merged_output_one_tensor_per_video():
    processor = load_processor("vcap-tiny-sft")
    model = frozen(load_policy("vcap-tiny-sft"))
    prompts = prompt_batch(processor)  # 3 videos of unequal sizes
    got = encode_videos(model, prompts)
    assert got is not None and len(got.pooler_output) == 3
    merge = model.config.vision_config.spatial_merge_size
    rows = (prompts["video_grid_thw"].prod(-1) // merge ** 2).tolist()
    assert [f.shape[0] for f in got.pooler_output] == rows  # one merged token per placeholder, per video
    with torch.no_grad():  # the tower run directly, by hand: its merged states in order, cut at each video
        tower = model.model.visual(prompts["pixel_values_videos"], grid_thw=prompts["video_grid_thw"])
    merged = tower.pooler_output if hasattr(tower, "pooler_output") else tower
    assert torch.equal(torch.cat(got.pooler_output), merged)


def test_a_trainable_tower_or_no_video_encodes_inside_each_forward():
    processor = load_processor("vcap-tiny-sft")
    model = load_policy("vcap-tiny-sft")
    prompts = prompt_batch(processor)
    assert not tower_is_frozen(model.requires_grad_(True))
    assert encode_videos(model, prompts) is None
    frozen(model)
    text_only = {k: v for k, v in prompts.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    assert encode_videos(model, text_only) is None


def test_a_tower_with_deepstack_outputs_is_left_to_the_forward(vcap_cache):
    """Qwen3-VL's tower also returns per-layer deepstack features, which these per-video tensors do not carry."""
    path = ensure_tiny_family("vcap-tiny-qwen3-vl")
    processor = load_processor(str(path))
    model = frozen(load_policy(str(path)))
    assert tower_is_frozen(model)
    assert encode_videos(model, prompt_batch(processor, [("Describe.", 4, 56), ("Caption it", 2, 112)])) is None
