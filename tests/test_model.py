"""Model loading: the embedded tiny model, LoRA placement, QLoRA on CPU, and clear errors."""
import pytest
import torch
from peft import LoraConfig

from vcap.model.loading import EMBEDDED, ModelNotFoundError, load_policy, load_processor, resolve_model_path
from vcap.model.tiny import SPECIAL_TOKENS


def test_tiny_model_roundtrip_and_special_tokens(tiny_path):
    processor = load_processor(str(tiny_path))
    tok = processor.tokenizer
    for token in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(token) < len(SPECIAL_TOKENS)  # trained as single, fixed-id tokens
    tokens = tok.tokenize("<think>[]</think>")
    assert tokens[0] == "<think>" and tokens[-1] == "</think>"
    assert tok.padding_side == "left"
    a, b = load_policy(str(tiny_path)), load_policy(str(tiny_path))
    ids = torch.tensor([[20, 21, 22]])
    assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    assert resolve_model_path("vcap-tiny") == str(tiny_path)


def test_shipped_warm_start_is_loadable():
    path = resolve_model_path("vcap-tiny-sft")
    model = load_policy(path)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and "vcap-tiny-sft" in EMBEDDED
    assert load_processor("vcap-tiny-sft").tokenizer.convert_tokens_to_ids("<answer>") < 20


def test_lora_targets_language_model_only_and_freezes_vision(tiny_path):
    model = load_policy(str(tiny_path), peft=LoraConfig(r=4, lora_alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)


def test_full_finetune_freeze_vision_flag(tiny_path):
    frozen = load_policy(str(tiny_path), freeze_vision=True)
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if ".visual." in n)
    free = load_policy(str(tiny_path), freeze_vision=False)
    assert all(p.requires_grad for p in free.parameters())


def test_qlora_4bit_loads_and_backpropagates_on_cpu(tiny_path):
    import bitsandbytes as bnb

    model = load_policy(str(tiny_path), load_in_4bit=True, peft=LoraConfig(r=4, lora_alpha=8))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    ids = torch.tensor([[20, 21, 22, 23]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "layers.0." in n)


@pytest.mark.gpu
def test_qlora_nf4_on_gpu(tiny_path):
    model = load_policy(str(tiny_path), load_in_4bit=True, dtype="bfloat16", peft=LoraConfig(r=4)).cuda()
    ids = torch.tensor([[20, 21, 22, 23]], device="cuda")
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_missing_models_explain_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_policy(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="exists but could not be loaded"):
        load_processor(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="hf download nobody/not-a-model-xyz"):
        load_policy("nobody/not-a-model-xyz")  # HF_HUB_OFFLINE=1 in tests: no network attempt
    with pytest.raises(ValueError, match="dtype"):
        load_policy("vcap-tiny", dtype="fp8")


def test_an_incomplete_cached_model_folder_is_built_again(tmp_path, monkeypatch):
    from vcap.model.tiny import ensure_tiny

    monkeypatch.setenv("VCAP_CACHE", str(tmp_path))
    models = tmp_path / "models"
    (models / "vcap-tiny").mkdir(parents=True)
    (models / "vcap-tiny" / "tokenizer.json").write_text("{}")  # a folder some interrupted write left behind
    (models / "vcap-tiny.tmp").mkdir()
    (models / "vcap-tiny.tmp" / "model.safetensors").write_text("half")  # a build that died
    path = ensure_tiny()
    assert (path / "config.json").exists() and (path / "model.safetensors").stat().st_size > 1000
    assert not (models / "vcap-tiny.tmp").exists()
