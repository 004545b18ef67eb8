"""Prompt batches whose videos differ in frame count and frame size and whose prompts differ in length."""
import numpy as np
import torch

from vcap.prompts import build_messages

# (prompt, frames, side): t x h x w grids 2x4x4, 4x6x6, 1x8x8 -> 32, 144, 64 pixel rows; prompts of 3 lengths
UNEQUAL = [("Describe.", 4, 56), ("Describe the video in great detail, every subject and what it does.", 8, 84),
           ("Caption it", 2, 112)]


def processed_prompt(processor, prompt: str, video: np.ndarray) -> dict[str, torch.Tensor]:
    """One prompt with its (frames, side, side, 3) video, processed at the video's own size."""
    side = video.shape[1]
    text = processor.apply_chat_template(build_messages(prompt), tokenize=False, add_generation_prompt=True)
    size = {"shortest_edge": side * side, "longest_edge": side * side}
    return processor(text=[text], videos=[video], return_tensors="pt",
                     videos_kwargs={"do_sample_frames": False, "size": size})


def left_padded(processor, items: list[dict]) -> dict[str, torch.Tensor]:
    """Processed prompts left-padded into one batch, as the collator's output."""
    length = max(x["input_ids"].shape[1] for x in items)
    pad = {"input_ids": processor.tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
    batch = {k: torch.stack([torch.nn.functional.pad(x[k][0], (length - x[k].shape[1], 0), value=v) for x in items])
             for k, v in pad.items()}
    batch["pixel_values_videos"] = torch.cat([x["pixel_values_videos"] for x in items])
    batch["video_grid_thw"] = torch.cat([x["video_grid_thw"] for x in items])
    return batch


def prompt_batch(processor, specs=UNEQUAL, seed: int = 0) -> dict[str, torch.Tensor]:
    """Processes each prompt at its own size, then left-pads into one batch, as the collator's output."""
    rng = np.random.default_rng(seed)
    batch = left_padded(processor, [
        processed_prompt(processor, prompt, rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8))
        for prompt, frames, side in specs])
    assert len(set(batch["video_grid_thw"].prod(-1).tolist())) == len(specs), "videos must differ in size"
    return batch


def random_completions(num_sequences: int, length: int, eos: int, pad: int, vocab: int = 300, seed: int = 0):
    """Completion ids and masks, some ending early (an EOS mid-way and one right away) so padding is exercised."""
    from vcap.grpo.rollout import completion_mask

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, vocab, (num_sequences, length), generator=gen)
    ids[1, 3] = eos
    ids[num_sequences // 2, 0] = eos
    mask = completion_mask(ids, [eos])
    return ids.masked_fill(mask == 0, pad), mask
