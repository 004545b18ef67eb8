"""``vcap-tiny``: a random-weight Qwen2-VL with a real processor, built offline in seconds.

The tokenizer is a byte-level BPE trained on the synthetic caption vocabulary plus the prompt, with
the Qwen2-VL special tokens and the <think>/<answer> tags as single tokens. Everything else is the
stock transformers Qwen2-VL stack, so code exercised on it runs unchanged on Qwen2-VL-7B.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock

from vcap.data.synthetic import vocabulary_corpus
from vcap.prompts import DEFAULT_PROMPT, SYSTEM_PROMPT

TINY_NAME = "vcap-tiny"
DEMO_NAME = "vcap-demo"
# Geometries of the embedded random models: vcap-tiny keeps tests fast; vcap-demo is a larger candidate for
# the demo (head_dim 32, which vLLM's CPU attention needs).
GEOMETRIES = {TINY_NAME: dict(hidden=64, layers=2, vision_depth=2),
              DEMO_NAME: dict(hidden=128, layers=3, vision_depth=2)}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_PIXELS = 56 * 56  # 4x4 patches per frame -> 4 merged tokens per temporal patch


def cache_root() -> Path:
    return Path(os.environ.get("VCAP_CACHE", Path.home() / ".cache" / "vcap"))


def build_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = vocabulary_corpus() + [DEFAULT_PROMPT, SYSTEM_PROMPT, "system user assistant"]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE, padding_side="left")


def build_processor(tokenizer, pixels: int = TINY_PIXELS):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": pixels, "longest_edge": pixels}
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size),
                            video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=True),
                            tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer, hidden: int = 64, layers: int = 2, vision_depth: int = 2):
    from transformers import Qwen2VLConfig

    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // 4
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None,
                eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]})
    vision = dict(depth=vision_depth, embed_dim=hidden, hidden_size=hidden, num_heads=4, mlp_ratio=2, in_channels=3,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                         video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                         vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)


def build_tiny(path: str | Path, seed: int = 0, name: str = TINY_NAME) -> Path:
    """Build and save the embedded model ``name`` with tokenizer and processor to ``path``; deterministic in ``seed``."""
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    path = Path(path)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(build_config(tokenizer, **GEOMETRIES[name]))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return save_atomically(path, model, processor)


def save_atomically(path: Path, model, processor) -> Path:
    """Write model and processor to ``path`` through a sibling ``.tmp`` folder, so ``path`` is complete or absent."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a build that died
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def ensure_built(path: Path, build) -> Path:
    """``path``, after ``build(path)`` unless it already holds a model (process-safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "config.json").exists():
            shutil.rmtree(path, ignore_errors=True)  # a folder without config.json is incomplete: built again
            build(path)
    return path


def ensure_tiny(name: str = TINY_NAME) -> Path:
    """Return the cached directory of the embedded random model ``name``, building it once (process-safe)."""
    if name not in GEOMETRIES:
        raise ValueError(f"unknown embedded random model {name!r}; valid: {sorted(GEOMETRIES)}")
    return ensure_built(cache_root() / "models" / name, lambda path: build_tiny(path, name=name))
