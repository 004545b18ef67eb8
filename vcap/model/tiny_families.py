"""Tiny random Qwen2.5-VL and Qwen3-VL models, built offline with each family's real processor classes.

They share vcap-tiny's byte-level tokenizer (Qwen special tokens as single tokens) and differ where the
families differ: config and model classes, vision tower (Qwen2.5-VL window attention; Qwen3-VL 16-pixel
patches, learned position embeddings and deepstack features), video processor, rope (Qwen3-VL's
interleaved mrope) and chat template. Names: ``vcap-tiny-qwen2.5-vl`` and ``vcap-tiny-qwen3-vl``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vcap.model.tiny import CHAT_TEMPLATE, TINY_PIXELS, build_tokenizer, cache_root, ensure_built, save_atomically

# Our templates, written to the families' published conversation format: Qwen2-VL and Qwen2.5-VL add a
# default system turn when there is none; Qwen3-VL does not.
_TURNS = CHAT_TEMPLATE  # the same turns as vcap-tiny's template
QWEN2_5_VL_TEMPLATE = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
                       "<|im_end|>\n{% endif %}" + _TURNS)
QWEN3_VL_TEMPLATE = _TURNS
TINY_FAMILY_NAMES = {"vcap-tiny-qwen2.5-vl": "qwen2_5_vl", "vcap-tiny-qwen3-vl": "qwen3_vl"}
HIDDEN, LAYERS, HEADS = 64, 2, 4


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _text(tokenizer, **extra) -> dict:
    head_dim = HIDDEN // HEADS
    return dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=HIDDEN * 2, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=2048,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8], **extra})


def build_qwen2_5_vl(tokenizer):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    size = {"shortest_edge": TINY_PIXELS, "longest_edge": TINY_PIXELS}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(size=size),
                                    video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=True),
                                    tokenizer=tokenizer, chat_template=QWEN2_5_VL_TEMPLATE)
    vision = dict(depth=2, hidden_size=HIDDEN, intermediate_size=HIDDEN * 2, num_heads=HEADS, out_hidden_size=HIDDEN,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    config = Qwen2_5_VLConfig(text_config=_text(tokenizer), vision_config=vision, tie_word_embeddings=True,
                              **_token_ids(tokenizer))
    return processor, Qwen2_5_VLForConditionalGeneration(config)


def build_qwen3_vl(tokenizer):
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    pixels = 64 * 64  # 16-pixel patches, merge 2: frames resize to multiples of 32
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=16),
        video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": pixels, "longest_edge": pixels * 8},
                                              patch_size=16, cap_pixels_per_frame=False),
        tokenizer=tokenizer, chat_template=QWEN3_VL_TEMPLATE)
    vision = dict(depth=2, hidden_size=HIDDEN, intermediate_size=HIDDEN * 2, num_heads=HEADS, out_hidden_size=HIDDEN,
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                  deepstack_visual_indexes=[0])
    text = {**_text(tokenizer, mrope_interleaved=True), "head_dim": HIDDEN // HEADS}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_token_ids(tokenizer))
    return processor, Qwen3VLForConditionalGeneration(config)


BUILDERS = {"qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl}


def build_tiny_family(name: str, path: str | Path, seed: int = 0) -> Path:
    from transformers import GenerationConfig

    if name not in TINY_FAMILY_NAMES:
        raise ValueError(f"unknown tiny model {name!r}; valid: {sorted(TINY_FAMILY_NAMES)}")
    path = Path(path)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    processor, model = BUILDERS[TINY_FAMILY_NAMES[name]](tokenizer)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return save_atomically(path, model, processor)


def ensure_tiny_family(name: str) -> Path:
    """The cached tiny model of another family, built once (process-safe)."""
    return ensure_built(cache_root() / "models" / name, lambda path: build_tiny_family(name, path))
