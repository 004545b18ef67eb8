"""The SFT loss on a hand-built batch equals a direct cross-entropy: targets written out by hand, each record's
prompt and target run unpadded through the model, ``torch.nn.functional.cross_entropy`` summed over every
target token of the batch and divided by their number. Padding is masked (the targets differ in length) and the
gradient matches too.
"""
import pytest
import torch
import torch.nn.functional as F

from tests.reference import assert_close, single_prompt
from tests.step_probe import prompt_batch
from vcap.methods.sft import SFTModule

MODEL = "vcap-tiny-sft"
STRUCTURES = [[{"subject": "circle", "attributes": ["red"], "actions": ["moves left"]}],
              [{"subject": "square", "attributes": ["blue", "large"], "actions": ["grows", "shrinks"]},
               {"subject": "triangle", "attributes": [], "actions": []}]]
CAPTIONS = ["A red circle moves left.", "A large blue square grows, then shrinks. A triangle stays."]
# the targets a correct SFT module must build, written out by hand
TARGETS = ['<think>[{"subject": "circle", "attributes": ["red"], "actions": ["moves left"]}]</think>'
           "<answer>A red circle moves left.</answer>",
           '<think>[{"subject": "square", "attributes": ["blue", "large"], "actions": ["grows", "shrinks"]}, '
           '{"subject": "triangle", "attributes": [], "actions": []}]</think>'
           "<answer>A large blue square grows, then shrinks. A triangle stays.</answer>"]


def records():
    return [{"id": f"r{i}", "structure": s, "caption": c, "sft_structure": [], "sft_caption": "ignored"}
            for i, (s, c) in enumerate(zip(STRUCTURES, CAPTIONS))]


def make_module(**options):
    module = SFTModule(name_or_path=MODEL, rewards={"format": 1.0}, target_source="reference", **options)
    module.configure_model()
    module.calls = []  # count_skips and log need a Trainer: recorded instead
    module.count_skips = lambda batch: module.calls.append(("count_skips", batch))
    module.log = lambda *args, **kwargs: module.calls.append(("log", args, kwargs))
    return module


def reference_loss(model, prompts, tokenizer, max_tokens=None):
    """Summed token cross-entropy of every target over the number of target tokens."""
    total, count = 0.0, 0
    for p, text in enumerate(TARGETS):
        target = tokenizer(text + tokenizer.eos_token, add_special_tokens=False, return_tensors="pt").input_ids[0]
        target = target[:max_tokens]
        prompt = single_prompt(prompts, p)
        ids = torch.cat([prompt["input_ids"], target]).unsqueeze(0)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(target)])[None],
                       pixel_values_videos=prompt["pixel_values_videos"], video_grid_thw=prompt["video_grid_thw"],
                       use_cache=False).logits[0]
        start = len(prompt["input_ids"]) - 1
        total = total + F.cross_entropy(logits[start:start + len(target)], target, reduction="sum")
        count += len(target)
    return total / count, count


@pytest.mark.parametrize("max_target_length", [512, 12])
def test_sft_loss_and_gradient_equal_a_direct_cross_entropy(max_target_length):
    module = make_module(max_target_length=max_target_length)
    tokenizer = module.tokenizer
    prompts = prompt_batch(module.processor, [0, 1])
    ids, mask = module.targets(records())
    lengths = mask.sum(1).tolist()
    if max_target_length == 512:
        assert [tokenizer.decode(ids[i][:n]) for i, n in enumerate(lengths)] == [t + tokenizer.eos_token
                                                                                 for t in TARGETS]
        assert lengths[0] < lengths[1] and ids[0, lengths[0]:].eq(tokenizer.pad_token_id).all()  # right padding
    else:
        assert lengths == [12, 12]

    batch = {"inputs": prompts, "records": records(), "skipped": []}
    loss = module.training_step(batch, 0)
    assert module.calls[0] == ("count_skips", batch)
    logged = {}
    for _, args, kwargs in module.calls[1:]:  # log(name, value, ...) or, through log_dict, log(name=..., value=...)
        name, value = args if args else (kwargs["name"], kwargs["value"])
        logged[name] = (float(value), kwargs.get("prog_bar"))
    # the loss is logged as the token mean over every rank's targets (one process here): the loss itself
    assert logged == {"train/loss": (pytest.approx(float(loss), rel=1e-6), True), "data/skipped_videos": (0.0, False)}
    loss.backward()
    got = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    module.model.zero_grad(set_to_none=True)
    max_tokens = None if max_target_length == 512 else max_target_length
    want, count = reference_loss(module.model, prompts, tokenizer, max_tokens)
    assert count == sum(lengths)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    want.backward()
    for name, p in module.model.named_parameters():
        if p.grad is not None:
            assert_close(got[name], p.grad, name, rel=1e-4)


def test_sft_targets_come_from_the_chosen_source():
    sft = make_module(max_target_length=512)
    sft.hparams.target_source = "sft"
    ids, mask = sft.targets([{"id": "a", "structure": STRUCTURES[0], "caption": CAPTIONS[0],
                              "sft_structure": [{"subject": "dot"}], "sft_caption": "A dot."}])
    text = sft.tokenizer.decode(ids[0][mask[0].bool()])
    assert text == ('<think>[{"subject": "dot", "attributes": [], "actions": []}]</think><answer>A dot.</answer>'
                    + sft.tokenizer.eos_token)
    ids, mask = sft.targets([{"id": "b", "structure": STRUCTURES[0], "caption": CAPTIONS[0]}])  # no sft_*: falls back
    assert sft.tokenizer.decode(ids[0][mask[0].bool()]) == TARGETS[0] + sft.tokenizer.eos_token
    with pytest.raises(ValueError, match="target_source"):
        SFTModule(name_or_path=MODEL, target_source="human")
    message = ("SFT needs 'structure' and 'caption' (or 'sft_structure' and 'sft_caption') in every record; "
               "r9 lacks one")
    for record in ({"id": "r9", "structure": STRUCTURES[0]}, {"id": "r9", "caption": "x"}):
        with pytest.raises(KeyError) as error:
            sft.targets([record])
        assert error.value.args == (message,)
