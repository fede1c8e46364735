"""Tests for msd_trl.models: name resolution, dtype rules, LoRA and 4-bit (QLoRA) loading, tokenizers. Offline, CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from msd_trl import models
from msd_trl.models import (
    default_lora_config,
    default_torch_dtype,
    disable_bnb_cpu_weight_packing,
    get_quantization_config,
    load_model,
    load_tokenizer,
    resolve_model_name_or_path,
)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# name resolution, dtypes, configs
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Qwen/Qwen2.5-7B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "./ckpt", "embedded"]
)
def test_other_names_pass_through_untouched(name, monkeypatch):
    monkeypatch.setattr(models, "ensure_embedded_model", lambda *a, **k: pytest.fail("built the embedded model"))
    assert resolve_model_name_or_path(name) == name


def test_path_objects_become_strings(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ensure_embedded_model", lambda *a, **k: pytest.fail("built the embedded model"))
    assert resolve_model_name_or_path(tmp_path) == str(tmp_path)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        ("auto", torch.float32),  # CUDA hidden below
        (None, torch.float32),
    ],
)
def test_dtype_parsing(dtype, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models._resolve_dtype(dtype) == expected


@pytest.mark.parametrize("dtype", ["fp8", "Float32", "torch.float32", torch.int8, 32])
def test_bad_dtype_raises_naming_the_argument(dtype, tiny_llama_dir):
    with pytest.raises(ValueError, match="`dtype`") as info:
        load_model(str(tiny_llama_dir), dtype=dtype)
    assert repr(dtype) in str(info.value)


@pytest.mark.parametrize(
    ("cuda", "bf16", "expected"),
    [(False, False, torch.float32), (True, False, torch.float32), (True, True, torch.bfloat16)],
)
def test_default_torch_dtype(cuda, bf16, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert default_torch_dtype() == expected


def test_quantization_config(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = get_quantization_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert get_quantization_config(compute_dtype="bfloat16").bnb_4bit_compute_dtype == torch.bfloat16
    assert get_quantization_config(load_in_4bit=False).load_in_8bit
    with pytest.raises(ValueError, match="`compute_dtype`"):
        get_quantization_config(compute_dtype="int4")


def test_default_lora_config():
    config = default_lora_config()
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (16, 32, 0.0, "all-linear")
    assert config.task_type == "CAUSAL_LM"
    assert default_lora_config(r=4, target_modules=["q_proj"]).target_modules == {"q_proj"}


# --------------------------------------------------------------------------------------------------------------
# loading tiny local models
# --------------------------------------------------------------------------------------------------------------


def test_load_model_plain_dtype(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_load_model_argument_conflicts(tiny_llama_dir):
    with pytest.raises(ValueError, match="`quantization_config`"):
        load_model(str(tiny_llama_dir), load_in_4bit=True, quantization_config=get_quantization_config())
    with pytest.raises(ValueError, match="`torch_dtype`"):
        load_model(str(tiny_llama_dir), torch_dtype=torch.float32)


def test_4bit_loading_and_qlora_backward_on_cpu(tiny_llama_dir):
    import bitsandbytes as bnb
    from peft import get_peft_model

    reference = load_model(str(tiny_llama_dir), dtype="float32")
    model = load_model(tiny_llama_dir, load_in_4bit=True)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert isinstance(getattr(model.model.layers[0].self_attn, proj), bnb.nn.Linear4bit)
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, bnb.nn.Linear4bit)
    assert down.weight.quant_state.quant_type == "nf4"
    assert type(model.lm_head) is torch.nn.Linear  # the output head stays unquantised
    assert model.is_loaded_in_4bit

    # NF4 error bound: each weight is rounded to the nearest of 16 levels scaled by its 64-block absmax; the widest
    # gap between levels is -0.6962 - (-1.0) = 0.3038 (NF4 table), so |w - dequant(w)| <= 0.152 * absmax, plus the
    # small error of the double-quantised (8-bit) absmax: 0.16 leaves room for it.
    dequantised = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)  # [out, in]
            original = reference.get_submodule(name).weight.detach()
            blocks = original.reshape(-1, 64)
            bound = 0.16 * blocks.abs().amax(dim=1, keepdim=True)
            assert ((weight.reshape(-1, 64) - blocks).abs() <= bound).all(), name
            dequantised[f"{name}.weight"] = weight

    # The 4-bit forward is the float32 forward with de-quantised weights.
    reference.load_state_dict(dequantised, strict=False)
    input_ids = torch.tensor([[1, 5, 9, 2, 7], [3, 3, 8, 0, 4]])  # [B=2, T=5]
    with torch.no_grad():
        logits = model(input_ids).logits  # [2, 5, 64]
        torch.testing.assert_close(logits, reference(input_ids).logits, atol=1e-5, rtol=1e-4)
    assert logits.shape == (2, 5, 64) and logits.dtype == torch.float32

    peft_model = get_peft_model(model, default_lora_config(r=4))
    with torch.no_grad():  # LoRA B starts at zero, so the adapter changes nothing yet
        torch.testing.assert_close(peft_model(input_ids).logits, logits)
    peft_model(input_ids, labels=input_ids).loss.backward()
    lora_b_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(lora_b_grads) == 7  # q, k, v, o, gate, up, down
    assert all(g is not None and g.abs().sum() > 0 for g in lora_b_grads)
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)


def _qlora_grads(model, input_ids, *, generate_first: bool) -> dict[str, torch.Tensor]:
    """LoRA gradients of one training step, optionally after a no-grad eval forward (as on-policy generation does)."""
    from peft import get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, default_lora_config(r=4))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # non-zero B so that gradients reach lora_A of lower layers through the base weights
            torch.nn.init.normal_(param, std=0.1)
    if generate_first:
        peft_model.eval()
        with torch.no_grad():
            peft_model(input_ids)
    peft_model.train()
    peft_model(input_ids, labels=input_ids).loss.backward()
    return {name: param.grad.clone() for name, param in peft_model.named_parameters() if param.grad is not None}


def test_qlora_gradients_unchanged_by_a_no_grad_eval_forward_on_cpu(tiny_llama_dir):
    """bitsandbytes repacks CPU 4-bit weights for a bf16 kernel without autograd after an eval forward; not ours."""
    input_ids = torch.tensor([[1, 5, 9, 2, 7], [3, 3, 8, 0, 4]])  # [B=2, T=5]
    fresh = _qlora_grads(load_model(tiny_llama_dir, load_in_4bit=True), input_ids, generate_first=False)
    after_eval = _qlora_grads(load_model(tiny_llama_dir, load_in_4bit=True), input_ids, generate_first=True)
    assert fresh.keys() == after_eval.keys() and len(fresh) == 14  # lora_A and lora_B of 7 linear layers
    for name in fresh:
        torch.testing.assert_close(after_eval[name], fresh[name], atol=0, rtol=0, msg=name)


def test_disable_bnb_cpu_weight_packing_undoes_packing(tiny_llama_dir):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=get_quantization_config())
    reference = load_model(tiny_llama_dir, load_in_4bit=True)
    input_ids = torch.tensor([[1, 5, 9]])  # [B=1, T=3]
    with torch.no_grad():
        model(input_ids)  # on an AVX512-BF16 CPU this repacks every Linear4bit weight in place
    disable_bnb_cpu_weight_packing(model)
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            assert not module.support_avx512bf16_for_cpu
            assert not getattr(module.weight.quant_state, "packing_format_for_cpu", False), name
            # The 4-bit codes come back exactly; the per-block absmax went through bf16 in bitsandbytes' packing.
            torch.testing.assert_close(module.weight.data, reference.get_submodule(name).weight.data, atol=0, rtol=0)
    with torch.no_grad():
        logits = model(input_ids).logits  # [1, 3, 64]
        torch.testing.assert_close(logits, reference(input_ids).logits, atol=1e-3, rtol=1e-2)
    assert disable_bnb_cpu_weight_packing(torch.nn.Linear(2, 2)) == 0


def _word_level_tokenizer(tmp_path: Path, **special) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    backend = Tokenizer(WordLevel({"<unk>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special).save_pretrained(tmp_path)
    return tmp_path


def test_load_tokenizer_pad_fallback_and_left_padding(tmp_path):
    path = _word_level_tokenizer(tmp_path, eos_token="</s>")
    tokenizer = load_tokenizer(path)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.padding_side) == ("</s>", 1, "left")
    assert tokenizer(["a b a", "b"], padding=True).input_ids == [[2, 3, 2], [1, 1, 3]]
    assert load_tokenizer(path, padding_side="right").padding_side == "right"


def test_load_tokenizer_without_pad_or_eos_raises(tmp_path):
    path = _word_level_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="`name_or_path`"):
        load_tokenizer(path)
