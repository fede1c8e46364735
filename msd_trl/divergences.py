"""Token-level divergences between a student and a teacher next-token distribution, with token weights.

Design
------
MSD compares, at every completion position, the student's next-token distribution (the model shown the
target-language query) with the teacher's (the same model shown the English query). Every objective here
follows one contract, on logits already aligned to the completion tokens:

* ``per_token(student_logits [B, T, V], teacher_logits [B, T, V], completion_ids [B, T]) -> [B, T]``:
  the unweighted divergence at each position (a pure function of the logits, differentiable in the student);
* ``token_weights(student_logits, teacher_logits, completion_ids, completion_mask) -> [B, T]``: a detached
  per-token weight (ones in the base class);
* ``__call__(..., completion_mask, num_items_in_batch=None) -> scalar``: ``sum(mask * w * D) / N`` with ``N``
  the number of valid tokens, or ``num_items_in_batch`` when the caller counted them over a whole accumulated
  batch. Masking and averaging happen in this one place, so a subclass never re-implements them.

Both ``per_token`` and ``token_weights`` receive logits already divided by ``temperature``; the scaling happens
once, in :meth:`Divergence.compute` (in float32 for float16 logits, whose range cannot hold ``-1e4 / T``).
``-inf`` logits (a masked vocabulary, logit processors) count as a large negative logit everywhere: in
``compute`` and in each exported pure function and view, so none of them returns NaN for them.

The default MSD objective is :class:`DPSW` (Dual-Perspective Safety Weighting) around :class:`ReverseKL`:
``w_t = w_min + (1 - w_min) * w_T(t) * w_S(t)`` with the teacher view ``w_T = 1 - H(top-K teacher) / log K``
(how decisive the teacher is: high on the tokens that open a refusal) and the student view
``w_S = 1 - p_S(argmax p_T)`` (how much mass the student fails to put on the teacher's choice), then
normalised to mean 1 over the valid tokens so the loss keeps the scale of the unweighted divergence.

Memory: with V up to 152k, ``[B, T, V]`` tensors dominate. Each built-in ``per_token`` allocates a constant
number of full-size temporaries (documented per function); token weights allocate ``[B, T, K]`` top-K
tensors and ``[B, T]`` reductions only, never a full-size temporary that is kept for backward.

Writing a new objective::

    class TotalVariation(Divergence):
        name = "tv"

        def per_token(self, student_logits, teacher_logits, completion_ids):
            # [B, T, V] -> [B, T]
            return 0.5 * (student_logits.softmax(-1) - teacher_logits.softmax(-1)).abs().sum(-1)

    loss = TotalVariation()(student_logits, teacher_logits, completion_ids, completion_mask)

Pass the instance wherever a divergence is accepted (``MSDConfig(divergence=...)`` takes names, trainers take
instances too), or register it by name with :func:`register_divergence`.

One contract, its five implementations (forward / reverse KL, generalized JSD, DPSW and its two views) and the name
registry belong together in this file; each function documents its memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import Registry

__all__ = [
    "DIVERGENCES",
    "DPSW",
    "Divergence",
    "DivergenceOutput",
    "ForwardKL",
    "GeneralizedJSD",
    "MIN_DIVERGENCE_TEMPERATURE",
    "ReverseKL",
    "available_divergences",
    "forward_kl",
    "generalized_jsd",
    "get_divergence",
    "register_divergence",
    "reverse_kl",
    "student_disagreement_view",
    "teacher_confidence_view",
]


# ----------------------------------------------------------------------------------------------------------------
# Pure per-token functions: logits [B, T, V] -> divergence [B, T], no masking, no reduction over tokens.
# ----------------------------------------------------------------------------------------------------------------

# Stands in for -inf logits: exp(-1e4 - logsumexp) is exactly 0 in float32, bfloat16 and float16, yet every
# difference stays finite, so "0 * log 0" terms are 0 instead of NaN.
_MASKED_LOGIT = -1.0e4
# The least divergence temperature: below it logits / T overflow (1e-38 turns every logit into +-inf in float32) and
# the loss grows as 1 / T. A documented floor, checked by `Divergence` and `MSDConfig.divergence_temperature`.
MIN_DIVERGENCE_TEMPERATURE = 1e-3


def _without_minus_inf(logits: torch.Tensor) -> torch.Tensor:
    """`logits` with -inf entries (a masked vocabulary, logit processors) set to `_MASKED_LOGIT`, the value every
    pure function and view here treats them as; a no-op (no copy) when every logit is finite. +inf and NaN stay."""
    if torch.isfinite(logits.sum(dtype=torch.float32)):  # one scalar reduction, no [B, T, V] temporary
        return logits
    return logits.masked_fill(logits == float("-inf"), _MASKED_LOGIT)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_teacher || p_student)`` per token, summed over the vocabulary.

    Mass-covering: the student is pushed to put mass wherever the teacher does. Allocates three ``[B, T, V]``
    temporaries (two log-softmaxes and the pointwise KL). ``-inf`` logits count as a large negative logit (finite
    result), as in every function here.
    """
    student_logits, teacher_logits = _without_minus_inf(student_logits), _without_minus_inf(teacher_logits)
    student_log_probs = F.log_softmax(student_logits, dim=-1)  # [B, T, V]
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)  # [B, T, V]
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)  # [B, T]


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_student || p_teacher)`` per token, summed over the vocabulary (MSD's default base divergence).

    Mode-seeking: the student is penalised for mass where the teacher has little, which is what makes it commit
    to the teacher's refusal instead of hedging. Allocates three ``[B, T, V]`` temporaries.
    """
    student_logits, teacher_logits = _without_minus_inf(student_logits), _without_minus_inf(teacher_logits)
    student_log_probs = F.log_softmax(student_logits, dim=-1)  # [B, T, V]
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)  # [B, T, V]
    return F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True).sum(-1)  # [B, T]


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024, Eq. 1), per token.

    With the mixture ``m = beta * p_teacher + (1 - beta) * p_student`` it is
    ``beta * KL(p_teacher || m) + (1 - beta) * KL(p_student || m)``; ``beta = 0`` is forward KL and ``beta = 1``
    reverse KL, exactly as in TRL's ``GKDTrainer.generalized_jsd_loss`` (same operations, so the same numbers).
    Allocates up to six ``[B, T, V]`` temporaries for ``0 < beta < 1`` (the stacked mixture counts twice).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got beta={beta!r}.")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits)
    student_logits, teacher_logits = _without_minus_inf(student_logits), _without_minus_inf(teacher_logits)
    student_log_probs = F.log_softmax(student_logits, dim=-1)  # [B, T, V]
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)  # [B, T, V]
    beta_t = torch.tensor(beta, dtype=student_log_probs.dtype, device=student_log_probs.device)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log1p(-beta_t), teacher_log_probs + torch.log(beta_t)]), dim=0
    )  # [B, T, V]
    kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
    return (beta_t * kl_teacher + (1 - beta_t) * kl_student).sum(-1)  # [B, T]


# ----------------------------------------------------------------------------------------------------------------
# DPSW views: detached [B, T] factors in [0, 1].
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def teacher_confidence_view(teacher_logits: torch.Tensor, *, top_k: int = 20) -> torch.Tensor:
    """Safety-criticality from the teacher: ``1 - H(p_T^K) / log K`` in [0, 1], per token.

    ``p_T^K`` is the teacher's top-K probabilities renormalised. 1 when the teacher is certain (one token carries
    the decision, as at the opening of a refusal), 0 when its top-K is flat. K is clipped to the vocabulary size.
    Allocates ``[B, T, K]`` tensors only.
    """
    if top_k < 2:
        raise ValueError(f"top_k must be >= 2 for the entropy ratio H / log K to be defined, got top_k={top_k!r}.")
    k = min(top_k, teacher_logits.size(-1))
    if k < 2:
        return torch.ones(teacher_logits.shape[:-1], dtype=teacher_logits.dtype, device=teacher_logits.device)
    # -inf among the top-K (fewer than K allowed tokens) would make 0 * log 0 a NaN entropy term.
    top_logits = _without_minus_inf(teacher_logits.topk(k, dim=-1).values.float())  # [B, T, K]
    top_log_probs = F.log_softmax(top_logits, dim=-1)  # [B, T, K]
    entropy = -(top_log_probs.exp() * top_log_probs).sum(-1)  # [B, T]
    return (1.0 - entropy / math.log(k)).clamp(0.0, 1.0).to(teacher_logits.dtype)


@torch.no_grad()
def student_disagreement_view(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Disagreement risk from the student: ``1 - p_S(argmax p_T)`` in [0, 1], per token.

    The probability mass the student fails to put on the teacher's preferred token. Uses a gather and a
    logsumexp, so no full-size probability tensor is materialised.
    """
    # A row of -inf logits (a masked position) would give -inf - logsumexp(-inf) = NaN.
    student_logits = _without_minus_inf(student_logits)
    teacher_top1 = teacher_logits.argmax(dim=-1, keepdim=True)  # [B, T, 1]
    student_logit_at_top1 = student_logits.gather(-1, teacher_top1).squeeze(-1)  # [B, T]
    student_prob_at_top1 = (student_logit_at_top1 - torch.logsumexp(student_logits, dim=-1)).exp()  # [B, T]
    return (1.0 - student_prob_at_top1).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# The Divergence contract.
# ----------------------------------------------------------------------------------------------------------------


def _scaled_logits(logits: torch.Tensor, completion_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """The logits every divergence hook receives: finite (`_finite_logits`), then divided by `temperature`. Float16
    logits are scaled in float32: float16 ends at 65504, so -1e4 / T for T <= 0.1 (or a large logit / T) would
    overflow to -inf again and the loss and DPSW weights would be NaN."""
    logits = _finite_logits(logits, completion_mask)
    if temperature != 1.0:
        if logits.dtype == torch.float16:
            logits = logits.float()
        logits = logits / temperature
    return logits


def _finite_logits(logits: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """`logits` with -inf entries (masked vocabulary, logit processors) set to a large negative finite value and
    masked positions set to 0, so no divergence meets `0 * -inf` or a softmax over nothing. A no-op (no copy)
    when every logit is finite; +inf and NaN are left alone and surface as a non-finite loss."""
    if torch.isfinite(logits.sum(dtype=torch.float32)):  # one scalar reduction, no [B, T, V] temporary
        return logits
    valid = completion_mask.bool().unsqueeze(-1)  # [B, T, 1]
    logits = logits.masked_fill(logits == float("-inf"), _MASKED_LOGIT)  # [B, T, V]
    return logits.masked_fill(~valid, 0.0)


@dataclass
class DivergenceOutput:
    """What one divergence evaluation produced; the trainer logs from it without recomputing anything.

    Attributes:
        loss: scalar, ``sum(mask * weights * per_token_loss) / N``, differentiable in the student logits.
        per_token_loss: ``[B, T]`` unweighted divergence (zero where masked), differentiable.
        weights: ``[B, T]`` detached token weights (as used in the loss, before masking).
        num_tokens: the normaliser ``N`` that was used.
    """

    loss: torch.Tensor
    per_token_loss: torch.Tensor
    weights: torch.Tensor
    num_tokens: torch.Tensor


class Divergence:
    """Base class of every MSD objective: subclass it and implement :meth:`per_token`.

    Hooks:
        per_token: ``[B, T, V], [B, T, V], [B, T] -> [B, T]`` unweighted divergence, differentiable in the
            student logits (the teacher logits arrive without grad).
        token_weights: ``-> [B, T]`` detached weights; override to weight tokens (the base returns ones).

    Args:
        temperature: both logit sets are divided by it before either hook sees them (default 1.0; at least
            ``MIN_DIVERGENCE_TEMPERATURE``).
    """

    name: str = "divergence"

    def __init__(self, *, temperature: float = 1.0):
        if not MIN_DIVERGENCE_TEMPERATURE <= temperature < math.inf:
            raise ValueError(
                f"temperature must be a finite number >= {MIN_DIVERGENCE_TEMPERATURE} (below it logits / T "
                f"overflow), got temperature={temperature!r}."
            )
        self.temperature = float(temperature)

    def per_token(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, completion_ids: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement per_token().")

    def token_weights(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> torch.Tensor:
        return torch.ones(completion_ids.shape, dtype=student_logits.dtype, device=student_logits.device)

    def local_token_weights(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Token weights from each position alone: what the chunked loss (`msd_trl.chunked_loss`) computes per chunk
        of positions. The base returns `token_weights`, so a custom weighting that looks across positions must
        override this and `weight_normaliser` to be used with `MSDConfig.loss_chunk_size`."""
        return self.token_weights(student_logits, teacher_logits, completion_ids, completion_mask)

    def weight_normaliser(self, weight_sum: torch.Tensor, num_valid: torch.Tensor) -> torch.Tensor | None:
        """The scalar the local weights are divided by, from their sum over the valid tokens (`None`: none)."""
        return None

    def compute(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> DivergenceOutput:
        """Evaluate the weighted, masked, normalised loss and keep the pieces for logging."""
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student_logits and teacher_logits must have the same shape [B, T, V], got "
                f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
            )
        if completion_mask.shape != student_logits.shape[:-1] or completion_ids.shape != completion_mask.shape:
            raise ValueError(
                f"completion_ids {tuple(completion_ids.shape)} and completion_mask {tuple(completion_mask.shape)} "
                f"must both be [B, T] = {tuple(student_logits.shape[:-1])}."
            )
        student_logits = _scaled_logits(student_logits, completion_mask, self.temperature)
        teacher_logits = _scaled_logits(teacher_logits.detach(), completion_mask, self.temperature)
        # Count and reduce in float32: in bf16, 1001 tokens round to 1000 and the loss drifts.
        mask = completion_mask.to(torch.float32)  # [B, T]
        per_token_loss = self.per_token(student_logits, teacher_logits, completion_ids)  # [B, T]
        with torch.no_grad():
            weights = self.token_weights(student_logits, teacher_logits, completion_ids, completion_mask)
        weights = weights.detach().float()  # [B, T]
        if num_items_in_batch is None:
            num_tokens = mask.sum()
        else:
            num_tokens = torch.as_tensor(num_items_in_batch, dtype=mask.dtype, device=mask.device)
        # clamp: an all-masked batch gives 0 / 1 = 0, finite, still connected to the student graph.
        loss = (per_token_loss.float() * weights * mask).sum() / num_tokens.clamp(min=1)
        return DivergenceOutput(
            loss=loss,
            per_token_loss=per_token_loss * mask.to(per_token_loss.dtype),
            weights=weights,
            num_tokens=num_tokens.detach(),
        )

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.compute(student_logits, teacher_logits, completion_ids, completion_mask, num_items_in_batch).loss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature={self.temperature})"


class ForwardKL(Divergence):
    """``KL(p_teacher || p_student)`` per token (mass-covering). See :func:`forward_kl`."""

    name = "forward_kl"

    def per_token(self, student_logits, teacher_logits, completion_ids):
        return forward_kl(student_logits, teacher_logits)


class ReverseKL(Divergence):
    """``KL(p_student || p_teacher)`` per token (mode-seeking; MSD's base divergence). See :func:`reverse_kl`."""

    name = "reverse_kl"

    def per_token(self, student_logits, teacher_logits, completion_ids):
        return reverse_kl(student_logits, teacher_logits)


class GeneralizedJSD(Divergence):
    """GKD's generalized JSD with interpolation ``beta`` (0: forward KL, 1: reverse KL). See :func:`generalized_jsd`.

    Numerically equal to ``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss`` on the same inputs.
    """

    name = "jsd"

    def __init__(self, beta: float = 0.5, *, temperature: float = 1.0):
        super().__init__(temperature=temperature)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got beta={beta!r}.")
        self.beta = float(beta)

    def per_token(self, student_logits, teacher_logits, completion_ids):
        return generalized_jsd(student_logits, teacher_logits, beta=self.beta)

    def __repr__(self) -> str:
        return f"GeneralizedJSD(beta={self.beta}, temperature={self.temperature})"


ViewFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class DPSW(Divergence):
    """Dual-Perspective Safety Weighting around a base divergence (default :class:`ReverseKL`).

    ``w_t = min_weight + (1 - min_weight) * w_T(t) * w_S(t)``, then (if ``normalize``) divided by its mean over the
    valid tokens of the batch, so the mean weight is 1 and the loss keeps the unweighted divergence's scale.

    Args:
        base: the divergence whose ``per_token`` is weighted (composition, not inheritance: any ``Divergence``).
        top_k: K of the teacher view's top-K entropy (our default 20, a choice the paper summary leaves open).
        min_weight: floor ``w_min`` in [0, 1] so no valid token is ignored (our default 0.1).
        normalize: divide by the mean weight over valid tokens. Under gradient accumulation this mean is per
            micro-batch, so accumulation equivalence is exact only with ``normalize=False``.
        teacher_view / student_view: replace either view with a callable
            ``(student_logits, teacher_logits, completion_ids) -> [B, T]`` in [0, 1]; ``None`` keeps the default
            (:func:`teacher_confidence_view`, :func:`student_disagreement_view`).
        temperature: defaults to the base divergence's temperature.
    """

    name = "dpsw"

    def __init__(
        self,
        base: Divergence | None = None,
        *,
        top_k: int = 20,
        min_weight: float = 0.1,
        normalize: bool = True,
        teacher_view: ViewFn | None = None,
        student_view: ViewFn | None = None,
        temperature: float | None = None,
    ):
        base = ReverseKL() if base is None else base
        if not isinstance(base, Divergence):
            raise ValueError(f"base must be a Divergence instance, got base={base!r}.")
        super().__init__(temperature=base.temperature if temperature is None else temperature)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 2:
            raise ValueError(f"top_k must be an integer >= 2, got top_k={top_k!r}.")
        if not 0.0 <= min_weight <= 1.0:
            raise ValueError(f"min_weight must be in [0, 1], got min_weight={min_weight!r}.")
        self.base = base
        self.top_k = top_k
        self.min_weight = float(min_weight)
        self.normalize = bool(normalize)
        # Bound methods, not lambdas: a config holding this instance is pickled with every checkpoint.
        self.teacher_view = teacher_view or self._default_teacher_view
        self.student_view = student_view or self._default_student_view

    def _default_teacher_view(self, student_logits, teacher_logits, completion_ids):
        return teacher_confidence_view(teacher_logits, top_k=self.top_k)

    def _default_student_view(self, student_logits, teacher_logits, completion_ids):
        return student_disagreement_view(student_logits, teacher_logits)

    def per_token(self, student_logits, teacher_logits, completion_ids):
        return self.base.per_token(student_logits, teacher_logits, completion_ids)

    def local_token_weights(self, student_logits, teacher_logits, completion_ids, completion_mask):
        with torch.no_grad():
            w_teacher = self.teacher_view(student_logits, teacher_logits, completion_ids)  # [B, T]
            w_student = self.student_view(student_logits, teacher_logits, completion_ids)  # [B, T]
            return (self.min_weight + (1.0 - self.min_weight) * w_teacher * w_student).detach()  # [B, T]

    def weight_normaliser(self, weight_sum, num_valid):
        if not self.normalize or num_valid <= 0:
            return None
        # The mean weight over valid tokens: >= min_weight > 0 unless min_weight == 0 and every product is 0.
        return (weight_sum / num_valid).clamp(min=torch.finfo(weight_sum.dtype).tiny)

    def token_weights(self, student_logits, teacher_logits, completion_ids, completion_mask):
        weights = self.local_token_weights(student_logits, teacher_logits, completion_ids, completion_mask)
        mask = completion_mask.to(weights.dtype)
        normaliser = self.weight_normaliser((weights * mask).sum(), mask.sum())
        return weights if normaliser is None else weights / normaliser

    def __repr__(self) -> str:
        return (
            f"DPSW(base={self.base!r}, top_k={self.top_k}, min_weight={self.min_weight}, "
            f"normalize={self.normalize}, temperature={self.temperature})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Names -> instances.
# ----------------------------------------------------------------------------------------------------------------

DIVERGENCES = Registry(
    "divergence",
    expects="a Divergence subclass",
    check=lambda value: isinstance(value, type) and issubclass(value, Divergence),
)
for _name, _cls in (("forward_kl", ForwardKL), ("reverse_kl", ReverseKL), ("jsd", GeneralizedJSD), ("dpsw", DPSW)):
    DIVERGENCES.register(_name, _cls)


def register_divergence(name: str, *, overwrite: bool = False) -> Callable[[type[Divergence]], type[Divergence]]:
    """Class decorator: make ``get_divergence(name)`` (and so ``MSDConfig(divergence=name)``) build this class."""
    return DIVERGENCES.register(name, overwrite=overwrite)


def available_divergences() -> list[str]:
    """Names :func:`get_divergence` accepts."""
    return sorted(DIVERGENCES)


def get_divergence(name: str | Divergence, **kwargs) -> Divergence:
    """Build a divergence from its name (``forward_kl``, ``reverse_kl``, ``jsd``, ``dpsw`` or a registered one).

    An instance passes through unchanged (``kwargs`` must then be empty). For ``dpsw``, ``base`` may be a name too:
    ``get_divergence("dpsw", base="jsd", top_k=10)``.
    """
    if isinstance(name, Divergence):
        if kwargs:
            raise ValueError(
                f"got a Divergence instance {name!r} and extra options {sorted(kwargs)}; pass one or the other."
            )
        return name
    cls = DIVERGENCES.lookup(name)
    if isinstance(kwargs.get("base"), str):
        kwargs["base"] = get_divergence(kwargs["base"])
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for divergence={name!r}: {err}") from err
