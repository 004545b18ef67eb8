"""Merged LoRA copies for rollouts (vcap/grpo/lora_merge.py) on a two-layer model, by hand values: the copy is
W + B A * alpha / r, the model computes with it inside ``applied`` and with its own weights after, copies follow the
weights version, and every layer that cannot be merged says why once.
"""
import logging
import pickle

import pytest
import torch
from peft import LoraConfig, get_peft_model

from vcap.grpo.lora_merge import RolloutWeights, mergeable_lora_layers

UP, DOWN = "base_model.model.up", "base_model.model.down"


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down, self.embed = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3), torch.nn.Embedding(5, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def lora_model(targets=("up", "down"), **options):
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=6, target_modules=list(targets), init_lora_weights=False, **options)
    return get_peft_model(TwoLayers(), config)


def merged_by_hand(layer) -> torch.Tensor:
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return layer.get_base_layer().weight + b @ a * (6 / 2)  # alpha / r = 3


def test_copies_are_the_merged_weights_and_the_model_computes_with_them_only_inside():
    model = lora_model()
    x = torch.randn(5, 4)
    with torch.no_grad():
        with_adapters = model(x)
        with model.disable_adapter():
            base = model(x)
    originals = {n: p for n, p in model.named_parameters()}
    weights = RolloutWeights()
    with torch.no_grad(), weights.applied(model, version=0):
        inside = model(x)
        layer = model.get_submodule(UP)
        assert layer.get_base_layer().weight is not originals[f"{UP}.base_layer.weight"]
        assert not layer.get_base_layer().weight.requires_grad
    assert set(weights.copies) == {UP, DOWN}
    for name in (UP, DOWN):
        torch.testing.assert_close(weights.copies[name], merged_by_hand(model.get_submodule(name)))
    torch.testing.assert_close(inside, with_adapters)
    assert not torch.allclose(inside, base)  # the adapters matter
    assert {n: p for n, p in model.named_parameters()} == originals  # the very same parameters are back
    with torch.no_grad():
        torch.testing.assert_close(model(x), with_adapters)


def test_copies_follow_the_weights_version_and_dtype():
    model = lora_model()
    weights = RolloutWeights()
    up = model.get_submodule(UP)
    with weights.applied(model, version=0):
        pass
    first = weights.copies[UP]
    with torch.no_grad():
        up.lora_B["default"].weight.add_(1.0)  # an optimizer step
    with weights.applied(model, version=0):  # the same version: the copies are not rebuilt
        pass
    assert weights.copies[UP] is first and not torch.allclose(first, merged_by_hand(up))
    with weights.applied(model, version=1):
        pass
    assert weights.copies[UP] is first  # refreshed in place (the graph reads this address)
    torch.testing.assert_close(first, merged_by_hand(up))
    with torch.no_grad():
        up.lora_B["default"].weight.add_(1.0)
    with weights.applied(model):  # no version: always refreshed
        pass
    torch.testing.assert_close(weights.copies[UP], merged_by_hand(up))
    model.double()
    with weights.applied(model, version=2):
        pass
    assert weights.copies[UP].dtype == torch.float64 and weights.copies[UP] is not first
    torch.testing.assert_close(weights.copies[UP], merged_by_hand(up))
    weights.refresh({UP: up}, version=3)  # a layer no longer given is dropped
    assert set(weights.copies) == {UP}
    copied = pickle.loads(pickle.dumps(weights))
    assert (copied.copies, copied.version, copied.reported) == ({}, None, None)


@pytest.mark.parametrize("options, targets, reason", [
    (dict(use_dora=True), ("up", "down"), "base_model.model.up uses a LoRA variant (DoRA / lora_bias)"),
    (dict(lora_bias=True), ("up", "down"), "base_model.model.up uses a LoRA variant (DoRA / lora_bias)"),
    ({}, ("embed", "up"), "base_model.model.embed wraps a Embedding (quantized or not a plain Linear)"),
])
def test_layers_that_cannot_be_merged_say_why_once_and_keep_their_adapters(options, targets, reason, caplog):
    model = lora_model(targets, **options)
    assert mergeable_lora_layers(model) == ({}, reason)
    weights = RolloutWeights()
    x = torch.randn(3, 4)
    with torch.no_grad():
        want = model(x)
        with caplog.at_level(logging.INFO, logger="vcap.grpo.lora_merge"):
            for _ in range(2):
                with weights.applied(model, version=0):
                    torch.testing.assert_close(model(x), want)  # the adapters, unmerged
    assert [r.getMessage() for r in caplog.records] == [f"LoRA rollouts use the adapters unmerged: {reason}"]
    assert weights.copies == {}


def test_merged_adapters_and_plain_models_are_left_alone():
    model = lora_model()
    model.merge_adapter()
    assert mergeable_lora_layers(model) == ({}, f"{UP} already has its adapters merged into the base weight")
    assert mergeable_lora_layers(TwoLayers()) == ({}, None)
