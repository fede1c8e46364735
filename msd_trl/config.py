"""`MSDConfig`: the configuration of both MSD trainers.

Design: `MSDConfig` subclasses TRL's `GKDConfig`, so every GKD field (`lmbda`, `beta`, `temperature`,
`max_new_tokens`, `teacher_model_name_or_path`, ...) and every `TrainingArguments` field keeps its meaning, and
`TrlParser` / YAML configs work unchanged. MSD adds five groups of fields (teacher, divergence, generation, vLLM rollouts, data),
each with a `help` string, and changes three defaults so a run fits the hardware it is on:

* `bf16` is on only where the accelerator supports it (TRL turns it on everywhere; on CPU it is many times
  slower than fp32);
* `gradient_checkpointing` is off unless asked for (TRL turns it on; it also disables the KV cache during
  on-policy generation);
* under `accelerate launch` / torchrun on a machine with no accelerator, `use_cpu` is set so the processes
  form one data-parallel job over gloo instead of N independent runs;
* `lmbda` is 1.0: MSD rows carry no response, so every step is on-policy unless a row has a fixed completion.

Cross-field checks live in `__post_init__`; each raises `ValueError` naming the field and the bad value.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

with warnings.catch_warnings():
    # MSD builds on GKD's config, which TRL keeps under trl.experimental; the warning is about TRL's API, not about
    # anything our users imported, and printed it at every run (twice).
    warnings.filterwarnings("ignore", message=r"You are importing from 'trl\.experimental'")
    from trl.experimental.gkd import GKDConfig

from .divergences import DPSW, MIN_DIVERGENCE_TEMPERATURE, Divergence, available_divergences, get_divergence
from .presets import (
    DEFAULT_TEACHER_PRESET,
    TEACHER_PRESETS,
    TeacherContext,
    validate_teacher_template,
)

logger = logging.getLogger(__name__)

# vLLM's modes and model implementations (TRL's VLLMGeneration and SDFTConfig).
VLLM_MODES = ("colocate", "server")
VLLM_MODEL_IMPLS = ("vllm", "transformers")

__all__ = ["MSDConfig", "bf16_supported", "build_divergence", "upgrade_config"]


def _launched_distributed() -> bool:
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def bf16_supported() -> bool:
    """True where bf16 training is fast: a CUDA device with native bf16 (Ampere or newer)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class MSDConfig(GKDConfig):
    r"""
    Configuration of [`OnPolicyMSDTrainer`] and [`OffPolicyMSDTrainer`].

    Everything from `GKDConfig` and `TrainingArguments` applies; the fields below are MSD's own.

    > Teacher: the privileged cross-lingual context

    teacher_preset (`str`, defaults to `"paper"`):
        A named teacher context from `msd_trl.presets.TEACHER_PRESETS` (`"paper"`, `"english_refusal"`,
        `"translation"`, `"identity"`, or one added with `register_teacher_preset`). It fills
        `teacher_prompt_template` and `teacher_system_prompt` when those are left unset. `"paper"` (the default, the
        paper's method: the original query and its English translation, judge safety in English, reply in
        `{language}`). On a model too small to follow it (the embedded 135M one) its teacher refuses nothing;
        `"english_refusal"` then teaches refusal at the price of English answers (measured: docs/results.md).
    teacher_prompt_template (`str` or `None`, defaults to the preset's):
        How the teacher's user turn is built from a row. Placeholders: `{prompt}` (the student's, target-language
        query), `{teacher_prompt}` (the English query) and `{language}` (the target language's English name, e.g.
        "Javanese"). Example: `"{teacher_prompt}\n\n(The user originally asked, in {language}: {prompt})"`.
    teacher_system_prompt (`str` or `None`, defaults to the preset's):
        A system prompt only the teacher sees (for example a safety instruction). The student never sees it.
        `""` means no system prompt even when the preset has one.
    benign_teacher_preset (`str` or `None`, defaults to `None`):
        A second teacher context, for benign rows only (rows whose `harmful` column is `False`); harmful rows and
        rows without the column keep the context above. `None`: one context for every row, as in the paper. With
        `teacher_preset="english_refusal"` and `benign_teacher_preset="paper"` the teacher refuses harmful requests
        and answers benign ones in the user's language: a context per row kind, still without response data
        (measured: docs/results.md).

    > Divergence

    divergence (`str` or `Divergence`, defaults to `"dpsw"`):
        The objective: `"dpsw"`, `"reverse_kl"`, `"forward_kl"`, `"jsd"` (GKD's generalized JSD with `beta`), a
        name registered with `register_divergence`, or a `Divergence` instance.
    dpsw_base (`str`, defaults to `"reverse_kl"`):
        The divergence DPSW weights (`"reverse_kl"`, `"forward_kl"` or `"jsd"`).
    dpsw_top_k (`int`, defaults to `20`):
        K of DPSW's teacher view (entropy of the teacher's renormalised top-K).
    dpsw_min_weight (`float`, defaults to `0.1`):
        DPSW's floor `w_min`: every valid token keeps at least this weight before normalisation.
    dpsw_normalize (`bool`, defaults to `True`):
        Normalise DPSW weights to mean 1 over the valid tokens of each micro-batch.
    divergence_temperature (`float`, defaults to `1.0`):
        Both logit sets are divided by it inside the divergence (GKD's loss also uses 1.0; `temperature` is the
        sampling temperature). At least `1e-3`: below it the scaled logits overflow and the loss grows as `1 / T`.

    loss_chunk_size (`int` or `None`, defaults to `None`):
        Compute the loss over chunks of this many completion positions from the models' last hidden states, with
        backward recomputing each chunk's logits: never more than `[B, chunk, V]` logits at once. For large
        vocabularies (Qwen2.5: 151,936); equal to the plain loss (to float rounding). `None`: the plain path.

    > Generation (on-policy rollouts and teacher text)

    top_p (`float`, defaults to `1.0`):
        Nucleus sampling threshold for on-policy rollouts and teacher completions.
    top_k (`int`, defaults to `0`):
        Top-k sampling for rollouts (`0` disables it), explicit so a model's own generation config never
        changes the sampling distribution behind your back.

    rollout_batch_size (`int` or `None`, defaults to `None`):
        Rows per on-policy generate call. `None`: every rollout of an optimizer step (all gradient-accumulation
        micro-batches) in one call, which amortises the per-token decode cost; a number caps the call's memory
        (rows are grouped by prompt length). Exactly on-policy either way: the weights do not change inside an
        accumulation window. The default is measured: at 4 x 4 on a CPU the step's peak memory is set in the loss
        and backward, and 4 or 8 rows per call saved none of it while costing generation time
        (docs/performance.md).
    generation_threads (`int` or `None`, defaults to `None`):
        CPU only: torch threads for the decode steps of rollouts (one new token per row) and the sampling between
        them. A decode step runs hundreds of small matrix products, and on a CPU each wakes OpenMP's worker threads,
        so one thread can decode faster than several (measured in docs/performance.md). The prompts' prefill, the
        forwards and the backward keep every thread. `None`: torch's setting.
    merge_adapter_for_generation (`bool`, defaults to `False`):
        Merge the LoRA adapter into the base weights for each rollout generate call and unmerge it after (also on
        error), so decoding skips the adapter's extra products (docs/performance.md). Needs
        a float32, unquantized PEFT model (checked at start): in lower precision every round trip would round the
        base weights, which are also the self-teacher's. Rollouts differ from unmerged ones by float32 rounding.
    teacher_cache_top_k (`int` or `None`, defaults to `None`):
        Off-policy only: score the fixed teacher text once before training and keep the teacher's top-K log-probs
        (leftover mass spread evenly over the other tokens), so steps run only the student. Exact at K = V; DPSW
        weights are exact when K >= `dpsw_top_k`.

    > vLLM rollouts (on-policy; TRL's `VLLMGeneration`, names, defaults and texts as in `SDFTConfig`)

    use_vllm (`bool`, defaults to `False`):
        Whether to use vLLM for generating completions. If set to `True`, the trainer will use vLLM for generation
        instead of the default model.generate(). Requires `vllm` to be installed. MSD: on-policy rollouts only
        (`OnPolicyMSDTrainer`); the weights are synced once per optimizer step, before that step's first rollout, and
        the self-teacher (the adapter-disabled base) is scored by the training model, never by vLLM
        (docs/vllm.md).
    vllm_mode (`str`, defaults to `"colocate"`):
        Mode to use for vLLM integration when `use_vllm` is set to `True`. Must be one of `'server'` or
        `'colocate'`. `'server'`: The trainer will send generation requests to a separate vLLM server. Make sure a
        vLLM server is running (start with `vllm serve`). `'colocate'`: vLLM will run in the same process and share
        the training GPUs. This avoids the need for a separate server but may cause resource contention with
        training.
    vllm_model_impl (`str`, defaults to `"vllm"`):
        Model implementation to use for vLLM. Must be one of `transformers` or `vllm`. `transformers`: Use the
        `transformers` backend for model implementation. `vllm`: Use the `vllm` library for model implementation.
    vllm_enable_sleep_mode (`bool`, defaults to `False`):
        Enable vLLM sleep mode to offload weights/cache during the optimizer step. Keeps GPU memory usage low, but
        waking the engine adds host–device transfer latency.
    vllm_server_base_url (`str` or `None`, defaults to `None`):
        Base URL for the vLLM server (e.g., 'http://localhost:8000'). If provided, `vllm_server_host` and
        `vllm_server_port` are ignored.
    vllm_server_host (`str`, defaults to `"0.0.0.0"`):
        Host of the vLLM server to connect to. Ignored if vllm_server_base_url is provided.
    vllm_server_port (`int`, defaults to `8000`):
        Port of the vLLM server to connect to. Ignored if vllm_server_base_url is provided.
    vllm_group_port (`int`, defaults to `51216`):
        Port number for the weight update group. This is used to communicate with the vLLM server. Unless the port
        is occupied, there is no need to change it.
    vllm_server_timeout (`float`, defaults to `240.0`):
        Total timeout duration in seconds to wait for the vLLM server to be up. If the server is not up after the
        timeout, a `ConnectionError` is raised.
    vllm_tensor_parallel_size (`int`, defaults to `1`):
        Control the tensor parallel size for vLLM. This setting only applies when `vllm_mode` is set to
        `'colocate'`. If you are using `vllm_mode='server'`, this parameter must be passed separately when
        launching the vLLM server via the `--vllm_tensor_parallel_size` flag.
    vllm_gpu_memory_utilization (`float`, defaults to `0.3`):
        Control the GPU memory utilization for vLLM. This setting only applies when `vllm_mode` is set to
        `'colocate'`. If you are using `vllm_mode='server'`, this parameter must be passed separately when
        launching the vLLM server via the `--vllm_gpu_memory_utilization` flag.
    vllm_max_model_length (`int` or `None`, defaults to `None`):
        Context window for vLLM. Set it to at least the maximum prompt length in the dataset plus
        `max_new_tokens`; if omitted, it is inferred from the model config.

    > Data

    max_prompt_length (`int` or `None`, defaults to `512`):
        Longest tokenised prompt (student or teacher, chat template included). Longer prompts are handled by
        `prompt_truncation`. Completion tokens are never truncated by this limit.
    prompt_truncation (`str`, defaults to `"left"`):
        `"left"`: shorten the start of the query text (the row's `prompt` / `teacher_prompt`, or the last user turn
        of `messages`), never the system prompt, the teacher template or earlier turns, and log a warning with the
        row's id; a row that cannot fit that way is a `ValueError`. `"error"`: raise for every long row.
    """

    # --- teacher ---
    teacher_preset: str = field(
        default=DEFAULT_TEACHER_PRESET,
        metadata={
            "help": "Named teacher context filling teacher_prompt_template and teacher_system_prompt when they are "
            f"unset: {', '.join(sorted(TEACHER_PRESETS))} (see docs/teacher_presets.md)."
        },
    )
    teacher_prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Template of the teacher's user turn (default: the preset's). Placeholders: {prompt} "
            "(target-language query), {teacher_prompt} (English query), {language} (target language name)."
        },
    )
    teacher_system_prompt: str | None = field(
        default=None,
        metadata={"help": "System prompt that only the teacher sees (default: the preset's; '' for none)."},
    )
    benign_teacher_preset: str | None = field(
        default=None,
        metadata={
            "help": "Teacher preset for benign rows only (harmful=False), e.g. 'paper' beside "
            "teacher_preset='english_refusal'; default: one context for every row."
        },
    )
    # --- divergence ---
    divergence: str = field(  # a Divergence instance is accepted too (not from the command line)
        default="dpsw",
        metadata={
            "help": "Objective: 'dpsw', 'reverse_kl', 'forward_kl', 'jsd' (GKD's JSD with `beta`), a registered "
            "name, or a Divergence instance.",
        },
    )
    dpsw_base: str = field(
        default="reverse_kl",
        metadata={"help": "Divergence that DPSW weights: 'reverse_kl', 'forward_kl' or 'jsd'."},
    )
    dpsw_top_k: int = field(
        default=20,
        metadata={"help": "K of DPSW's teacher view: entropy of the teacher's renormalised top-K probabilities."},
    )
    dpsw_min_weight: float = field(
        default=0.1,
        metadata={"help": "DPSW floor w_min in [0, 1]: the least weight of any valid token before normalisation."},
    )
    dpsw_normalize: bool = field(
        default=True,
        metadata={
            "help": "Normalise DPSW token weights to mean 1 over the valid tokens of each micro-batch (the loss "
            "itself always divides by the token count of the whole accumulated batch)."
        },
    )
    divergence_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature applied to both logit sets inside the divergence (GKD uses 1.0)."},
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Loss over chunks of this many completion positions (from hidden states, recomputed in "
            "backward): never more than [batch, chunk, vocab] logits at once. For large vocabularies; default off."
        },
    )
    # --- generation ---
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus sampling threshold for rollouts and teacher completions, in (0, 1]."},
    )
    top_k: int = field(
        default=0,
        metadata={"help": "Top-k sampling for rollouts and teacher completions; 0 disables it."},
    )
    rollout_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per on-policy generate call; default: every rollout of an optimizer step (all accumulation "
            "micro-batches) in one call. Set it to cap generation memory."
        },
    )
    generation_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU only: torch threads for the decode steps of rollouts (1 decodes fastest on a small CPU under "
            "OMP_WAIT_POLICY=PASSIVE; prefill, forward and backward keep every thread). Default: torch's setting."
        },
    )
    merge_adapter_for_generation: bool = field(
        default=False,
        metadata={
            "help": "Merge the LoRA adapter into the base weights for each rollout generate call and unmerge it "
            "after (faster decoding). Needs a float32, unquantized PEFT model."
        },
    )
    teacher_cache_top_k: int | None = field(
        default=None,
        metadata={
            "help": "Off-policy only: score the teacher text once before training and keep the teacher's top-K "
            "log-probs (the leftover mass spread evenly over the other tokens), so steps run only the student. "
            "Exact when K = vocabulary size; DPSW weights are exact when K >= dpsw_top_k."
        },
    )
    # --- vLLM rollouts (SDFTConfig's names, defaults and help texts) ---
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Whether to use vLLM for generating completions. If set to `True`, the trainer will use vLLM for "
            "generation instead of the default model.generate(). Requires `vllm` to be installed. MSD: on-policy "
            "rollouts only, weights synced once per optimizer step; the self-teacher is never synced."
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "Mode to use for vLLM integration when `use_vllm` is set to `True`. Must be one of `'server'` or "
            "`'colocate'`. `'server'`: The trainer will send generation requests to a separate vLLM server. Make sure "
            "a vLLM server is running (start with `vllm serve`). `'colocate'`: vLLM will run in the same process and "
            "share the training GPUs. This avoids the need for a separate server but may cause resource contention "
            "with training."
        },
    )
    vllm_model_impl: str = field(
        default="vllm",
        metadata={
            "help": "Model implementation to use for vLLM. Must be one of `transformers` or `vllm`. `transformers`: "
            "Use the `transformers` backend for model implementation. `vllm`: Use the `vllm` library for model "
            "implementation."
        },
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "Enable vLLM sleep mode to offload weights/cache during the optimizer step. Keeps GPU memory "
            "usage low, but waking the engine adds host–device transfer latency."
        },
    )
    vllm_server_base_url: str | None = field(
        default=None,
        metadata={
            "help": "Base URL for the vLLM server (e.g., 'http://localhost:8000'). If provided, `vllm_server_host` "
            "and `vllm_server_port` are ignored."
        },
    )
    vllm_server_host: str = field(
        default="0.0.0.0",
        metadata={"help": "Host of the vLLM server to connect to. Ignored if vllm_server_base_url is provided."},
    )
    vllm_server_port: int = field(
        default=8000,
        metadata={"help": "Port of the vLLM server to connect to. Ignored if vllm_server_base_url is provided."},
    )
    vllm_group_port: int = field(
        default=51216,
        metadata={
            "help": "Port number for the weight update group. This is used to communicate with the vLLM server. "
            "Unless the port is occupied, there is no need to change it."
        },
    )
    vllm_server_timeout: float = field(
        default=240.0,
        metadata={
            "help": "Total timeout duration in seconds to wait for the vLLM server to be up. If the server is not up "
            "after the timeout, a `ConnectionError` is raised."
        },
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Control the tensor parallel size for vLLM. This setting only applies when `vllm_mode` is set to "
            "`'colocate'`. If you are using `vllm_mode='server'`, this parameter must be passed separately when "
            "launching the vLLM server via the `--vllm_tensor_parallel_size` flag."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "Control the GPU memory utilization for vLLM. This setting only applies when `vllm_mode` is set "
            "to `'colocate'`. If you are using `vllm_mode='server'`, this parameter must be passed separately when "
            "launching the vLLM server via the `--vllm_gpu_memory_utilization` flag."
        },
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={
            "help": "Context window for vLLM. Set it to at least the maximum prompt length in the dataset plus "
            "`max_new_tokens`; if omitted, it is inferred from the model config."
        },
    )
    # --- data ---
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Longest tokenised prompt (student or teacher); longer ones follow `prompt_truncation`."},
    )
    prompt_truncation: str = field(
        default="left",
        metadata={
            "help": "'left': shorten the start of the query text (never the system prompt, template or earlier "
            "turns) and log it; 'error': raise."
        },
    )
    # --- GKD / TRL defaults that MSD changes ---
    lmbda: float = field(
        default=1.0,
        metadata={
            "help": "Probability that a step is on-policy (student rollouts). Other steps use the row's fixed "
            "completion if it has one. Ignored by OffPolicyMSDTrainer."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of `activation_checkpointing` (off unless asked: it slows steps and disables "
            "the KV cache during generation)."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: on only where the accelerator supports bf16 natively."},
    )

    def __post_init__(self):
        for name in ("lmbda", "beta"):  # GKDConfig checks these too, without naming the value
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"MSDConfig.{name}={getattr(self, name)!r} is invalid: must be in [0, 1].")
        if self.bf16 is None:
            self.bf16 = bool(bf16_supported() and not self.fp16)
        if self.dataloader_pin_memory and not _has_accelerator():
            self.dataloader_pin_memory = False  # pinning is for host-to-GPU copies; on CPU torch only warns about it
        if not self.use_cpu and _launched_distributed() and not _has_accelerator():
            # `accelerate launch --multi_gpu` / torchrun on a machine with no accelerator: without use_cpu,
            # accelerate would silently run N independent processes; with it, DDP over gloo.
            self.use_cpu = True
        super().__post_init__()
        self._resolve_teacher_preset()
        self._check_fields()

    def _resolve_teacher_preset(self) -> None:
        # Unset template / system prompt come from the preset (presets.TeacherContext.resolve, the one resolver). A
        # system prompt of "" (explicitly none) stays "", so a config saved and loaded again resolves to the same
        # teacher.
        context = TeacherContext.of(self, owner="MSDConfig.")
        self.teacher_prompt_template = context.template
        self.teacher_system_prompt = context.system_prompt or ""

    @property
    def teacher_context(self) -> TeacherContext:
        """The resolved teacher context (template, system prompt, and the benign rows' context if any)."""
        return TeacherContext.of(self)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field `name`, read without building a config (which sets up a whole `TrainingArguments`):
        how code outside this module reads a training default (e.g. teacher text's `max_new_tokens`)."""
        for item in fields(cls):
            if item.name == name:
                return item.default if item.default is not MISSING else item.default_factory()
        raise ValueError(f"MSDConfig has no field {name!r}.")

    def _check_fields(self) -> None:
        def bad(name: str, why: str):
            raise ValueError(f"MSDConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        if isinstance(self.divergence, str):
            if self.divergence not in available_divergences():
                bad("divergence", f"choose one of {available_divergences()} or pass a Divergence instance.")
        elif not isinstance(self.divergence, Divergence):
            bad("divergence", "expected a name or a Divergence instance.")
        if self.dpsw_base not in available_divergences() or self.dpsw_base == "dpsw":
            bad("dpsw_base", f"choose one of {[n for n in available_divergences() if n != 'dpsw']}.")
        if isinstance(self.dpsw_top_k, bool) or not isinstance(self.dpsw_top_k, int) or self.dpsw_top_k < 2:
            bad("dpsw_top_k", "must be an integer >= 2.")
        if not 0.0 <= self.dpsw_min_weight <= 1.0:
            bad("dpsw_min_weight", "must be in [0, 1].")
        if not MIN_DIVERGENCE_TEMPERATURE <= self.divergence_temperature < float("inf"):
            bad(
                "divergence_temperature",
                f"must be >= {MIN_DIVERGENCE_TEMPERATURE} and finite (below it logits / T overflow and the loss "
                "grows as 1 / T: the run would fail later with non-finite logits).",
            )
        if not 0 < self.temperature < float("inf"):
            bad("temperature", "the sampling temperature must be a finite number > 0.")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1].")
        if self.top_k < 0:
            bad("top_k", "must be >= 0 (0 disables top-k sampling).")
        if self.max_new_tokens < 1:
            bad("max_new_tokens", "must be >= 1.")

        def positive_int_or_none(name: str, none_means: str):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                bad(name, f"must be an integer >= 1, or None for {none_means}.")

        positive_int_or_none("loss_chunk_size", "the plain loss")
        positive_int_or_none("rollout_batch_size", "one call per optimizer step")
        positive_int_or_none("generation_threads", "torch's setting")
        self._check_vllm_fields(bad, positive_int_or_none)
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            bad("max_prompt_length", "must be >= 1 or None.")
        if self.teacher_cache_top_k is not None:
            if self.teacher_cache_top_k < 1:
                bad("teacher_cache_top_k", "must be >= 1 or None.")
            if self.divergence == "dpsw" and self.teacher_cache_top_k < self.dpsw_top_k:
                bad("teacher_cache_top_k", f"must be >= dpsw_top_k={self.dpsw_top_k} so DPSW's teacher view is exact.")
        if self.seq_kd:
            bad(
                "seq_kd",
                "sequence-level KD is not implemented by the MSD trainers; use OffPolicyMSDTrainer on teacher text.",
            )
        if self.prompt_truncation not in ("left", "error"):
            bad("prompt_truncation", "must be 'left' or 'error'.")
        if isinstance(self.divergence, DPSW) and self.teacher_cache_top_k is not None:
            if self.teacher_cache_top_k < self.divergence.top_k:
                bad(
                    "teacher_cache_top_k",
                    f"must be >= the DPSW instance's top_k={self.divergence.top_k} so its teacher view is exact.",
                )

    def _check_vllm_fields(self, bad, positive_int_or_none) -> None:
        # Checked whether or not use_vllm is on, so a config saved with a bad value fails where it is written.
        if self.vllm_mode not in VLLM_MODES:
            bad("vllm_mode", f"must be one of {list(VLLM_MODES)}.")
        if self.vllm_model_impl not in VLLM_MODEL_IMPLS:
            bad("vllm_model_impl", f"must be one of {list(VLLM_MODEL_IMPLS)}.")
        for name in ("vllm_server_port", "vllm_group_port"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                bad(name, "must be a port number in [1, 65535].")
        if not 0 < self.vllm_server_timeout < float("inf"):
            bad("vllm_server_timeout", "must be a finite number of seconds > 0.")
        size = self.vllm_tensor_parallel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            bad("vllm_tensor_parallel_size", "must be an integer >= 1.")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            bad("vllm_gpu_memory_utilization", "must be in (0, 1]: the share of GPU memory vLLM may reserve.")
        positive_int_or_none("vllm_max_model_length", "the model config's context length")
        if not self.use_vllm:
            return
        # Options of the model.generate path that would silently do nothing with vLLM sampling.
        if self.merge_adapter_for_generation:
            bad(
                "merge_adapter_for_generation",
                "is an option of the model.generate rollouts; with use_vllm=True, VLLMGeneration merges the adapter "
                "itself at every weight sync. Set one of them to False.",
            )
        if self.generation_threads is not None:
            bad("generation_threads", "is a CPU model.generate option; with use_vllm=True set it to None.")

    @staticmethod
    def template_placeholders(template: str) -> set[str]:
        """The placeholders of a valid teacher template (a ValueError names the problem otherwise)."""
        return validate_teacher_template(template, field="MSDConfig.teacher_prompt_template")

    def to_dict(self) -> dict[str, Any]:
        # A Divergence instance is not JSON-serialisable; record its repr so saved configs stay readable.
        output = super().to_dict()
        if isinstance(self.divergence, Divergence):
            output["divergence"] = repr(self.divergence)
        return output


def build_divergence(args: MSDConfig) -> Divergence:
    """The divergence an `MSDConfig` asks for (an instance in `args.divergence` passes through)."""
    if isinstance(args.divergence, Divergence):
        return args.divergence
    temperature = args.divergence_temperature
    if args.divergence == "jsd":
        return get_divergence("jsd", beta=args.beta, temperature=temperature)
    if args.divergence == "dpsw":
        base_kwargs = {"beta": args.beta} if args.dpsw_base == "jsd" else {}
        base = get_divergence(args.dpsw_base, temperature=temperature, **base_kwargs)
        return DPSW(base, top_k=args.dpsw_top_k, min_weight=args.dpsw_min_weight, normalize=args.dpsw_normalize)
    return get_divergence(args.divergence, temperature=temperature)


def upgrade_config(args: GKDConfig | MSDConfig | None, output_dir: str = "msd_output") -> MSDConfig:
    """The `MSDConfig` a trainer runs with: `None` -> defaults; a plain `GKDConfig` -> the same values with GKD's
    objective (`divergence="jsd"`) and GKD's teacher (`teacher_preset="translation"`: the row's teacher_prompt if
    any, else the student's prompt, no system prompt)."""
    if args is None:
        return MSDConfig(output_dir=output_dir)
    if isinstance(args, MSDConfig):
        return args
    if not isinstance(args, GKDConfig):
        raise ValueError(f"args must be an MSDConfig or a GKDConfig, got {type(args).__name__}.")
    values = {f.name: getattr(args, f.name) for f in fields(GKDConfig) if f.init and hasattr(args, f.name)}
    # GKDConfig resolves these deprecated aliases in __post_init__; pass only the new names.
    values.pop("gradient_checkpointing", None)
    values.pop("gradient_checkpointing_kwargs", None)
    logger.info(
        "Upgrading GKDConfig to MSDConfig with divergence='jsd' (GKD's generalized JSD, beta=%s); GKD's own values "
        "(lmbda=%s, bf16=%s, gradient checkpointing=%s) are kept as given.",
        args.beta,
        args.lmbda,
        args.bf16,
        args.gradient_checkpointing,
    )
    return MSDConfig(**values, divergence="jsd", teacher_preset="translation")
