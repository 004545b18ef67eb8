"""LoRA rollouts at the base model's speed: decode from copies of the adapted weights with the adapters folded in.

An unmerged LoRA linear costs its base GEMM plus two skinny GEMMs, a scale and an add on every decode step (five
launches instead of one). ``RolloutWeights`` keeps, for each adapted linear, a copy W + B A * scale in the base
weight's dtype, refreshed once per optimizer step (``weights_version``) in place, so its address never changes (a
CUDA graph captured on it stays valid). During a rollout the base layers read those copies and the adapters are
switched off; the base weights themselves are never written, so the reference (adapters disabled) stays
bit-identical to the base model. The copies cost one language model's worth of adapted weights
(``benchmarks/memory_estimate.py``: ``rollout_lora_copy``).

Layers a copy cannot represent exactly keep the adapter path: quantized (4-bit) bases (a bf16 copy would undo
QLoRA's memory saving), sharded (DTensor) weights, and LoRA variants (DoRA, lora_bias).
"""
from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager

import torch

log = logging.getLogger(__name__)


def mergeable_lora_layers(model) -> tuple[dict[str, torch.nn.Module], str | None]:
    """The model's LoRA linears by name, or an empty dict and the reason they cannot be merged into copies."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}, None
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    if not layers:
        return {}, None
    for name, layer in layers.items():
        base = layer.get_base_layer()
        weight = getattr(base, "weight", None)
        if type(base) is not torch.nn.Linear or weight is None:
            return {}, f"{name} wraps a {type(base).__name__} (quantized or not a plain Linear)"
        if type(weight.data).__name__ == "DTensor" or type(weight).__name__ == "DTensor":
            return {}, f"{name} is sharded"
        for adapter in layer.active_adapters:
            if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(adapter):
                return {}, f"{name} uses a LoRA variant (DoRA / lora_bias)"
        if layer.merged:
            return {}, f"{name} already has its adapters merged into the base weight"
    return layers, None


class RolloutWeights:
    """Merged copies of a PEFT model's LoRA linears for rollouts (see the module docstring)."""

    def __init__(self):
        self.copies: dict[str, torch.Tensor] = {}
        self.version = None
        self.reported: str | None = None

    def __getstate__(self):  # copies are rebuilt on first use
        return {"copies": {}, "version": None, "reported": None}

    @torch.no_grad()
    def refresh(self, layers: dict[str, torch.nn.Module], version) -> None:
        if version is not None and version == self.version and self.copies.keys() == layers.keys():
            return
        for name, layer in layers.items():
            weight = layer.get_base_layer().weight
            copy = self.copies.get(name)
            if copy is None or copy.shape != weight.shape or copy.dtype != weight.dtype or copy.device != weight.device:
                copy = self.copies[name] = torch.empty_like(weight, memory_format=torch.contiguous_format)
            copy.copy_(weight)
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    copy += layer.get_delta_weight(adapter).to(copy.dtype)  # peft's own B A * scale
        for stale in set(self.copies) - set(layers):
            del self.copies[stale]
        self.version = version

    @contextmanager
    def applied(self, model, version=None):
        """Within: every LoRA linear computes with its merged copy and no adapter; a no-op for other models."""
        layers, reason = mergeable_lora_layers(model)
        if reason is not None and reason != self.reported:
            log.info("LoRA rollouts use the adapters unmerged: %s", reason)
            self.reported = reason
        if not layers:
            yield
            return
        self.refresh(layers, version)
        originals = {name: layer.get_base_layer().weight for name, layer in layers.items()}
        with ExitStack() as stack:
            stack.enter_context(model.disable_adapter())
            try:
                for name, layer in layers.items():
                    layer.get_base_layer().weight = torch.nn.Parameter(self.copies[name], requires_grad=False)
                yield
            finally:
                for name, layer in layers.items():
                    layer.get_base_layer().weight = originals[name]
