"""Tests for msd_trl.divergences: hand-computed values, invariants over every divergence, TRL equivalence.

Expected numbers come from explicit probabilities on 2-3 token vocabularies, computed with ``math`` in this file
(``_kl`` below), never by calling the code under test. Logits are ``log(p)``, so ``softmax(logits) == p`` exactly up
to float rounding. Every invariant runs over the ``DIVERGENCES`` table, so a new built-in joins all of them by
adding one line there.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import msd_trl.divergences as divergences
from msd_trl.divergences import (
    DPSW,
    Divergence,
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    available_divergences,
    generalized_jsd,
    get_divergence,
    register_divergence,
    student_disagreement_view,
    teacher_confidence_view,
)


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) in nats, from explicit probabilities."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _entropy(p: list[float]) -> float:
    return -sum(a * math.log(a) for a in p if a > 0)


def _logits(*rows: list[float]) -> torch.Tensor:
    """Probabilities per position -> logits [1, T, V] (log p, float32)."""
    return torch.tensor(rows, dtype=torch.float64).log().float().unsqueeze(0)


def _ids(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros(logits.shape[:-1], dtype=torch.long)


class TotalVariation(Divergence):
    """The user-defined objective of the module docstring."""

    name = "tv"

    def per_token(self, student_logits, teacher_logits, completion_ids):
        # [B, T, V] -> [B, T]
        return 0.5 * (student_logits.softmax(-1) - teacher_logits.softmax(-1)).abs().sum(-1)


DIVERGENCES = [
    pytest.param(ForwardKL(), id="forward_kl"),
    pytest.param(ReverseKL(), id="reverse_kl"),
    *[pytest.param(GeneralizedJSD(beta), id=f"jsd_{beta}") for beta in (0.0, 0.3, 0.5, 1.0)],
    pytest.param(DPSW(), id="dpsw"),
    pytest.param(DPSW(base=ForwardKL()), id="dpsw_forward_kl"),
    pytest.param(DPSW(normalize=False), id="dpsw_unnormalized"),
    pytest.param(ReverseKL(temperature=2.0), id="reverse_kl_t2"),
    pytest.param(DPSW(base=GeneralizedJSD(0.5, temperature=0.5)), id="dpsw_jsd_t0.5"),
    pytest.param(TotalVariation(), id="user_tv"),
]
DIVERGENCE_INSTANCES = [param.values[0] for param in DIVERGENCES]


@pytest.fixture
def batch():
    """Random student/teacher logits [2, 5, 7] with a ragged completion mask (one row has 2 padded tokens)."""
    generator = torch.Generator().manual_seed(0)
    student_logits = 2.0 * torch.randn(2, 5, 7, generator=generator)
    teacher_logits = 2.0 * torch.randn(2, 5, 7, generator=generator)
    completion_ids = torch.randint(0, 7, (2, 5), generator=generator)
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return student_logits, teacher_logits, completion_ids, completion_mask


# ----------------------------------------------------------------------------------------------------------------
# Hand-computed values.
# ----------------------------------------------------------------------------------------------------------------

P_STUDENT_2 = [0.25, 0.75]
P_TEACHER_2 = [0.5, 0.5]


def test_forward_kl_two_tokens():
    # KL(teacher || student) = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    student, teacher = _logits(P_STUDENT_2), _logits(P_TEACHER_2)
    loss = ForwardKL()(student, teacher, _ids(student), torch.ones(1, 1))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1438410362, abs=1e-9)


def test_reverse_kl_two_tokens():
    # KL(student || teacher) = 0.25 ln(0.25 / 0.5) + 0.75 ln(0.75 / 0.5)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    student, teacher = _logits(P_STUDENT_2), _logits(P_TEACHER_2)
    loss = ReverseKL()(student, teacher, _ids(student), torch.ones(1, 1))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1308120359, abs=1e-9)


def test_jsd_half_two_tokens():
    # m = 0.5 * teacher + 0.5 * student = [0.375, 0.625]
    m = [0.375, 0.625]
    expected = 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)) + 0.5 * (
        0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
    )
    assert expected == pytest.approx(0.5 * _kl(P_TEACHER_2, m) + 0.5 * _kl(P_STUDENT_2, m))
    student, teacher = _logits(P_STUDENT_2), _logits(P_TEACHER_2)
    loss = GeneralizedJSD(0.5)(student, teacher, _ids(student), torch.ones(1, 1))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_jsd_asymmetric_beta_three_tokens():
    # beta = 0.3 is not symmetric in (student, teacher), so a swapped implementation fails here.
    p_student, p_teacher = [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]
    m = [0.3 * t + 0.7 * s for s, t in zip(p_student, p_teacher)]  # [0.32, 0.44, 0.24]
    expected = 0.3 * _kl(p_teacher, m) + 0.7 * _kl(p_student, m)
    swapped = 0.3 * _kl(p_student, [0.3 * s + 0.7 * t for s, t in zip(p_student, p_teacher)]) + 0.7 * _kl(
        p_teacher, [0.3 * s + 0.7 * t for s, t in zip(p_student, p_teacher)]
    )
    assert abs(expected - swapped) > 1e-3
    student, teacher = _logits(p_student), _logits(p_teacher)
    assert GeneralizedJSD(0.3)(student, teacher, _ids(student), torch.ones(1, 1)).item() == pytest.approx(
        expected, abs=1e-6
    )


def test_jsd_endpoints_are_the_kls():
    p_student, p_teacher = [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]
    student, teacher = _logits(p_student), _logits(p_teacher)
    assert generalized_jsd(student, teacher, beta=0.0).item() == pytest.approx(_kl(p_teacher, p_student), abs=1e-6)
    assert generalized_jsd(student, teacher, beta=1.0).item() == pytest.approx(_kl(p_student, p_teacher), abs=1e-6)


def test_mean_over_valid_positions_only():
    # Position 0 valid, position 1 masked: the loss is position 0's divergence, N = 1.
    student = _logits(P_STUDENT_2, [0.9, 0.1])
    teacher = _logits(P_TEACHER_2, [0.1, 0.9])
    loss = ReverseKL()(student, teacher, _ids(student), torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(_kl(P_STUDENT_2, P_TEACHER_2), abs=1e-6)


def test_temperature_divides_both_logit_sets():
    # T = 2 on logits log(p) gives softmax(log(p) / 2) = sqrt(p) / sum(sqrt(p)).
    def sharpen(p):
        roots = [math.sqrt(a) for a in p]
        return [r / sum(roots) for r in roots]

    student, teacher = _logits(P_STUDENT_2), _logits(P_TEACHER_2)
    expected = _kl(sharpen(P_STUDENT_2), sharpen(P_TEACHER_2))
    loss = ReverseKL(temperature=2.0)(student, teacher, _ids(student), torch.ones(1, 1))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_teacher_view_hand_values():
    # K = V = 3 on [0.5, 0.25, 0.25]: H = 1.5 ln 2, w_T = 1 - H / ln 3.
    teacher = _logits([0.5, 0.25, 0.25])
    expected = 1.0 - 1.5 * math.log(2.0) / math.log(3.0)
    assert teacher_confidence_view(teacher, top_k=3).item() == pytest.approx(expected, abs=1e-6)
    # K = 20 is clipped to V = 3.
    assert teacher_confidence_view(teacher, top_k=20).item() == pytest.approx(expected, abs=1e-6)
    # K = 2 on [0.5, 0.3, 0.2]: renormalised top-2 is [0.625, 0.375].
    teacher = _logits([0.5, 0.3, 0.2])
    expected = 1.0 - _entropy([0.625, 0.375]) / math.log(2.0)
    assert teacher_confidence_view(teacher, top_k=2).item() == pytest.approx(expected, abs=1e-6)


def test_teacher_view_extremes():
    one_hot_ish = torch.tensor([[[30.0, 0.0, 0.0, 0.0]]])
    uniform = torch.zeros(1, 1, 4)
    assert teacher_confidence_view(one_hot_ish, top_k=4).item() == pytest.approx(1.0, abs=1e-6)
    assert teacher_confidence_view(uniform, top_k=4).item() == pytest.approx(0.0, abs=1e-6)
    # A top-K that is flat is 0 even when the tail is not: [0.3, 0.3, 0.3, 0.1] with K = 3.
    assert teacher_confidence_view(_logits([0.3, 0.3, 0.3, 0.1]), top_k=3).item() == pytest.approx(0.0, abs=1e-6)


def test_student_view_hand_value():
    # The teacher prefers token 0; the student puts 0.2 on it.
    student, teacher = _logits([0.2, 0.7, 0.1]), _logits([0.5, 0.25, 0.25])
    assert student_disagreement_view(student, teacher).item() == pytest.approx(0.8, abs=1e-6)
    assert student_disagreement_view(teacher, teacher).item() == pytest.approx(0.5, abs=1e-6)


# Three positions of a [1, 3, 3] batch; the third is masked.
DPSW_STUDENT = [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.01, 0.01, 0.98]]
DPSW_TEACHER = [[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [0.98, 0.01, 0.01]]
DPSW_MASK = torch.tensor([[1, 1, 0]])


def _dpsw_raw_weights(min_weight: float) -> list[float]:
    """w = w_min + (1 - w_min) * w_T * w_S by hand, for DPSW_STUDENT / DPSW_TEACHER with K = V = 3."""
    weights = []
    for p_student, p_teacher in zip(DPSW_STUDENT, DPSW_TEACHER):
        w_teacher = 1.0 - _entropy(p_teacher) / math.log(3.0)
        w_student = 1.0 - p_student[p_teacher.index(max(p_teacher))]
        weights.append(min_weight + (1.0 - min_weight) * w_teacher * w_student)
    return weights


def test_dpsw_floor_formula_unnormalised():
    student, teacher = _logits(*DPSW_STUDENT), _logits(*DPSW_TEACHER)
    dpsw = DPSW(top_k=3, min_weight=0.1, normalize=False)
    weights = dpsw.token_weights(student, teacher, _ids(student), DPSW_MASK)
    # Position 0 spelt out: w_T = 1 - 1.5 ln 2 / ln 3, w_S = 0.8.
    w0 = 0.1 + 0.9 * (1.0 - 1.5 * math.log(2.0) / math.log(3.0)) * 0.8
    assert weights[0, 0].item() == pytest.approx(w0, abs=1e-6)
    assert weights[0].tolist() == pytest.approx(_dpsw_raw_weights(0.1), abs=1e-6)
    # normalize=False leaves them as computed, masked position included.
    loss = dpsw(student, teacher, _ids(student), DPSW_MASK)
    kls = [_kl(s, t) for s, t in zip(DPSW_STUDENT, DPSW_TEACHER)]
    raw = _dpsw_raw_weights(0.1)
    assert loss.item() == pytest.approx((raw[0] * kls[0] + raw[1] * kls[1]) / 2, abs=1e-6)


def test_dpsw_normalised_to_mean_one_over_valid_tokens():
    student, teacher = _logits(*DPSW_STUDENT), _logits(*DPSW_TEACHER)
    raw = _dpsw_raw_weights(0.1)
    mean_valid = (raw[0] + raw[1]) / 2  # the masked position's (large) weight is not in the mean
    weights = DPSW(top_k=3, min_weight=0.1).token_weights(student, teacher, _ids(student), DPSW_MASK)
    assert weights[0, :2].tolist() == pytest.approx([raw[0] / mean_valid, raw[1] / mean_valid], abs=1e-5)
    assert weights[0, :2].mean().item() == pytest.approx(1.0, abs=1e-6)
    # The mean over all three positions would differ: the masked token really is excluded.
    assert abs(sum(raw) / 3 - mean_valid) > 0.05
    kls = [_kl(s, t) for s, t in zip(DPSW_STUDENT, DPSW_TEACHER)]
    loss = DPSW(top_k=3, min_weight=0.1)(student, teacher, _ids(student), DPSW_MASK)
    assert loss.item() == pytest.approx((raw[0] * kls[0] + raw[1] * kls[1]) / mean_valid / 2, abs=1e-6)


def test_dpsw_min_weight_one_is_the_base_divergence(batch):
    student, teacher, ids, mask = batch
    assert DPSW(min_weight=1.0)(student, teacher, ids, mask).item() == pytest.approx(
        ReverseKL()(student, teacher, ids, mask).item(), abs=1e-6
    )


def test_dpsw_weight_range(batch):
    student, teacher, ids, mask = batch
    raw = DPSW(min_weight=0.2, normalize=False).token_weights(student, teacher, ids, mask)
    assert raw.min().item() >= 0.2 - 1e-6 and raw.max().item() <= 1.0 + 1e-6
    mean_valid = (raw * mask).sum() / mask.sum()
    normalised = DPSW(min_weight=0.2).token_weights(student, teacher, ids, mask)
    assert torch.allclose(normalised, raw / mean_valid, atol=1e-6)
    valid = normalised[mask.bool()]
    assert valid.min().item() >= 0.2 / mean_valid.item() - 1e-6
    assert valid.max().item() <= 1.0 / mean_valid.item() + 1e-6


def test_dpsw_highest_where_teacher_confident_and_student_disagrees():
    confident, flat = [10.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]  # both prefer token 0
    agrees, disagrees = [10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]
    teacher = torch.tensor([[confident, confident, flat, flat]])  # [1, 4, 4]
    student = torch.tensor([[disagrees, agrees, disagrees, agrees]])
    weights = DPSW(top_k=4, min_weight=0.1, normalize=False).token_weights(
        student, teacher, _ids(student), torch.ones(1, 4)
    )[0]
    assert weights[0].item() > 0.9  # confident teacher, disagreeing student: close to 1
    for other in weights[1:].tolist():
        assert other < 0.2  # one of the two views is ~0: close to the floor 0.1
        assert weights[0].item() > other + 0.5


# ----------------------------------------------------------------------------------------------------------------
# Invariants over every divergence.
# ----------------------------------------------------------------------------------------------------------------


def _scaled(divergence: Divergence, logits: torch.Tensor) -> torch.Tensor:
    return logits / divergence.temperature


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_non_negative_per_token(divergence, batch):
    student, teacher, ids, mask = batch
    output = divergence.compute(student, teacher, ids, mask)
    assert (output.per_token_loss >= -1e-6).all()
    assert (output.weights >= 0).all()
    assert output.loss.item() >= 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_zero_iff_distributions_equal(divergence, batch):
    student, teacher, ids, mask = batch
    # Same logits, and logits shifted by a per-position constant (the same distribution).
    shift = torch.randn(2, 5, 1, generator=torch.Generator().manual_seed(1))  # [B, T, 1]
    for same in (student.clone(), student + shift):
        per_token = divergence.per_token(_scaled(divergence, student), _scaled(divergence, same), ids)
        assert per_token.abs().max().item() < 1e-5
        assert abs(divergence(student, same, ids, mask).item()) < 1e-5
    per_token = divergence.per_token(_scaled(divergence, student), _scaled(divergence, teacher), ids)
    assert (per_token > 1e-4).all()
    assert divergence(student, teacher, ids, mask).item() > 1e-4


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_masked_positions_change_nothing(divergence, batch):
    student, teacher, ids, mask = batch
    padded = ~mask.bool()  # [B, T]
    generator = torch.Generator().manual_seed(2)
    other_student = torch.where(padded.unsqueeze(-1), 5.0 * torch.randn(student.shape, generator=generator), student)
    other_teacher = torch.where(padded.unsqueeze(-1), 5.0 * torch.randn(teacher.shape, generator=generator), teacher)
    other_ids = torch.where(padded, torch.zeros_like(ids), ids)
    grads = []
    for s, t, i in ((student, teacher, ids), (other_student, other_teacher, other_ids)):
        s = s.clone().requires_grad_(True)
        loss = divergence(s, t, i, mask)
        loss.backward()
        grads.append((loss.detach(), s.grad))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert torch.allclose(grad_a, grad_b, atol=1e-7)
    assert (grad_a[padded] == 0).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_all_masked_batch_is_a_finite_zero_that_backpropagates(divergence, batch):
    student, teacher, ids, _ = batch
    student = student.clone().requires_grad_(True)
    loss = divergence(student, teacher, ids, torch.zeros(2, 5, dtype=torch.long))
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and (student.grad == 0).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradients_reach_student_only(divergence, batch):
    student, teacher, ids, mask = batch
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    output = divergence.compute(student, teacher, ids, mask)
    assert output.per_token_loss.requires_grad
    assert not output.weights.requires_grad
    assert not output.num_tokens.requires_grad
    output.loss.backward()
    assert student.grad is not None and student.grad.abs().sum().item() > 0
    assert torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_loss_is_weighted_masked_sum_over_n(divergence, batch):
    student, teacher, ids, mask = batch
    s, t = _scaled(divergence, student), _scaled(divergence, teacher)
    per_token = divergence.per_token(s, t, ids)  # [B, T]
    weights = divergence.token_weights(s, t, ids, mask)  # [B, T]
    weighted_sum = (mask * weights * per_token).sum()
    assert divergence(student, teacher, ids, mask).item() == pytest.approx((weighted_sum / 8).item(), abs=1e-6)
    output = divergence.compute(student, teacher, ids, mask)
    assert output.num_tokens.item() == 8
    assert torch.allclose(output.per_token_loss, per_token * mask, atol=1e-6)
    assert torch.allclose(output.weights, weights, atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("num_items_in_batch", [17, torch.tensor(17)], ids=["int", "tensor"])
def test_num_items_in_batch_replaces_local_count(divergence, num_items_in_batch, batch):
    student, teacher, ids, mask = batch
    local = divergence(student, teacher, ids, mask)  # N = 8
    output = divergence.compute(student, teacher, ids, mask, num_items_in_batch=num_items_in_batch)
    assert output.num_tokens.item() == 17
    assert output.loss.item() == pytest.approx(local.item() * 8 / 17, abs=1e-6)


@pytest.mark.parametrize(
    "divergence",
    [ForwardKL(), ReverseKL(), GeneralizedJSD(0.3), DPSW(normalize=False)],
    ids=["forward_kl", "reverse_kl", "jsd_0.3", "dpsw_unnormalized"],
)
def test_accumulation_over_micro_batches_equals_one_batch(divergence, batch):
    # With N counted over the whole accumulated batch, 2 micro-batches of 1 row sum to the 1 x 2 loss.
    student, teacher, ids, mask = batch
    whole = divergence(student, teacher, ids, mask)
    num_items = int(mask.sum())
    parts = [
        divergence(student[i : i + 1], teacher[i : i + 1], ids[i : i + 1], mask[i : i + 1], num_items)
        for i in range(2)
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_bool_and_float_masks_agree(divergence, batch):
    student, teacher, ids, mask = batch
    expected = divergence(student, teacher, ids, mask).item()
    assert divergence(student, teacher, ids, mask.bool()).item() == pytest.approx(expected, abs=1e-6)
    assert divergence(student, teacher, ids, mask.float()).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_pickles(divergence, batch):
    # Trainer._save calls torch.save(self.args): an instance held in MSDConfig.divergence must pickle.
    student, teacher, ids, mask = batch
    restored = pickle.loads(pickle.dumps(divergence))
    assert restored(student, teacher, ids, mask).item() == pytest.approx(
        divergence(student, teacher, ids, mask).item(), abs=1e-7
    )


def test_normaliser_counts_tokens_exactly_with_bf16_logits():
    # The trainer hands bf16 logits straight to the divergence under bf16 training; N must still be the exact
    # count of valid tokens (1001 is not representable in bf16: it rounds to 1000).
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(1, 1001, 3, generator=generator).bfloat16()
    teacher = torch.randn(1, 1001, 3, generator=generator).bfloat16()
    ids, mask = torch.zeros(1, 1001, dtype=torch.long), torch.ones(1, 1001, dtype=torch.long)
    assert ReverseKL().compute(student, teacher, ids, mask).num_tokens.item() == 1001
    assert ReverseKL().compute(student, teacher, ids, mask, num_items_in_batch=1001).num_tokens.item() == 1001


def test_large_vocabulary_runs():
    # Memory note: a realistic vocabulary; only checks that it runs and backpropagates (no timing).
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 8, 32000, generator=generator).requires_grad_(True)
    teacher = torch.randn(2, 8, 32000, generator=generator)
    ids = torch.randint(0, 32000, (2, 8), generator=generator)
    mask = torch.ones(2, 8)
    mask[1, 5:] = 0
    output = DPSW().compute(student, teacher, ids, mask)
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    assert (output.weights[mask.bool()].mean() - 1).abs().item() < 1e-5
    output.loss.backward()
    assert student.grad.shape == (2, 8, 32000) and torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------------------------------------------
# Equivalence with TRL's GKD loss.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("num_items_in_batch", [None, 13])
def test_jsd_matches_trl_gkd(beta, temperature, num_items_in_batch):
    from trl.experimental.gkd import GKDTrainer

    generator = torch.Generator().manual_seed(1)
    student = 3.0 * torch.randn(2, 5, 11, generator=generator)
    teacher = 3.0 * torch.randn(2, 5, 11, generator=generator)
    ids = torch.randint(0, 11, (2, 5), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    labels = ids.masked_fill(mask == 0, -100)
    expected = GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=temperature, num_items_in_batch=num_items_in_batch
    )
    ours = GeneralizedJSD(beta, temperature=temperature)(student, teacher, ids, mask, num_items_in_batch)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Property tests.
# ----------------------------------------------------------------------------------------------------------------

_FLOATS = st.floats(min_value=-8.0, max_value=8.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _batches(draw):
    b, t, v = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    student = torch.tensor(draw(st.lists(_FLOATS, min_size=b * t * v, max_size=b * t * v))).view(b, t, v)
    teacher = torch.tensor(draw(st.lists(_FLOATS, min_size=b * t * v, max_size=b * t * v))).view(b, t, v)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).view(b, t)
    return student, teacher, torch.zeros(b, t, dtype=torch.long), mask


@settings(deadline=None, max_examples=50)
@given(inputs=_batches(), divergence=st.sampled_from(DIVERGENCE_INSTANCES))
def test_property_non_negative(inputs, divergence):
    student, teacher, ids, mask = inputs
    output = divergence.compute(student, teacher, ids, mask)
    assert (output.per_token_loss >= -1e-5).all()
    assert torch.isfinite(output.loss) and output.loss.item() >= -1e-5


@settings(deadline=None, max_examples=50)
@given(inputs=_batches(), divergence=st.sampled_from(DIVERGENCE_INSTANCES))
def test_property_zero_for_identical_logits(inputs, divergence):
    student, _, ids, mask = inputs
    output = divergence.compute(student, student.clone(), ids, mask)
    assert output.per_token_loss.abs().max().item() < 1e-5
    assert abs(output.loss.item()) < 1e-5


@settings(deadline=None, max_examples=50)
@given(
    inputs=_batches(),
    top_k=st.integers(2, 8),
    min_weight=st.floats(min_value=0.01, max_value=1.0, allow_nan=False),
    base=st.sampled_from([ReverseKL(), ForwardKL(), GeneralizedJSD(0.5)]),
)
def test_property_dpsw_mean_weight_is_one_over_valid_tokens(inputs, top_k, min_weight, base):
    student, teacher, ids, mask = inputs
    mask[0, 0] = True  # at least one valid token
    weights = DPSW(base, top_k=top_k, min_weight=min_weight).compute(student, teacher, ids, mask).weights
    assert weights[mask].mean().item() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Extension points: user subclasses, the registry, get_divergence.
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, restored after the test, so registrations here never leak."""
    monkeypatch.setattr(divergences, "DIVERGENCES", divergences.DIVERGENCES.copy())


def test_user_subclass_through_call():
    # TV on the 2-token pair: 0.5 * (|0.25 - 0.5| + |0.75 - 0.5|) = 0.25.
    student, teacher = _logits(P_STUDENT_2), _logits(P_TEACHER_2)
    assert TotalVariation()(student, teacher, _ids(student), torch.ones(1, 1)).item() == pytest.approx(0.25, abs=1e-6)
    # Composition: DPSW weights any Divergence; with w_min = 1 the weights are all 1.
    dpsw = DPSW(TotalVariation(), min_weight=1.0)
    assert dpsw(student, teacher, _ids(student), torch.ones(1, 1)).item() == pytest.approx(0.25, abs=1e-6)


def test_base_class_requires_per_token():
    with pytest.raises(NotImplementedError, match="per_token"):
        Divergence()(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))


def test_register_and_get_user_divergence(scratch_registry):
    assert register_divergence("tv")(TotalVariation) is TotalVariation
    assert "tv" in available_divergences()
    built = get_divergence("tv", temperature=2.0)
    assert isinstance(built, TotalVariation) and built.temperature == 2.0
    student, teacher = _logits(P_STUDENT_2), _logits(P_TEACHER_2)
    assert get_divergence("tv")(student, teacher, _ids(student), torch.ones(1, 1)).item() == pytest.approx(0.25)
    dpsw = get_divergence("dpsw", base="tv", top_k=2)
    assert isinstance(dpsw.base, TotalVariation)


def test_register_rejects_non_divergence(scratch_registry):
    with pytest.raises(ValueError, match="Divergence subclass"):
        register_divergence("bad")(object)
    with pytest.raises(ValueError, match="Divergence subclass"):
        register_divergence("bad")(TotalVariation())
    assert "bad" not in available_divergences()


def test_get_divergence_builds_builtins():
    assert available_divergences() == ["dpsw", "forward_kl", "jsd", "reverse_kl"]
    assert type(get_divergence("forward_kl")) is ForwardKL
    assert type(get_divergence("reverse_kl", temperature=0.5)) is ReverseKL
    jsd = get_divergence("jsd", beta=0.2)
    assert type(jsd) is GeneralizedJSD and jsd.beta == 0.2
    dpsw = get_divergence("dpsw")
    assert type(dpsw) is DPSW and type(dpsw.base) is ReverseKL and dpsw.top_k == 20 and dpsw.min_weight == 0.1


def test_get_divergence_dpsw_with_named_base():
    dpsw = get_divergence("dpsw", base="jsd", top_k=5)
    assert isinstance(dpsw, DPSW) and dpsw.top_k == 5
    assert type(dpsw.base) is GeneralizedJSD and dpsw.base.beta == 0.5


def test_get_divergence_passes_instances_through():
    instance = DPSW(top_k=3)
    assert get_divergence(instance) is instance
    with pytest.raises(ValueError, match="extra options"):
        get_divergence(instance, top_k=4)


def test_get_divergence_unknown_name_lists_names():
    with pytest.raises(ValueError) as excinfo:
        get_divergence("kullback")
    message = str(excinfo.value)
    assert "'kullback'" in message
    for name in available_divergences():
        assert name in message


def test_get_divergence_bad_option():
    with pytest.raises(ValueError, match="divergence='jsd'"):
        get_divergence("jsd", gamma=0.1)


@pytest.mark.parametrize(
    ("build", "argument", "value"),
    [
        (lambda: GeneralizedJSD(1.5), "beta", "1.5"),
        (lambda: GeneralizedJSD(-0.1), "beta", "-0.1"),
        (lambda: ReverseKL(temperature=0.0), "temperature", "0.0"),
        (lambda: DPSW(temperature=-1.0), "temperature", "-1.0"),
        (lambda: DPSW(top_k=1), "top_k", "1"),
        (lambda: DPSW(top_k=True), "top_k", "True"),
        (lambda: DPSW(top_k=2.5), "top_k", "2.5"),
        (lambda: DPSW(min_weight=1.5), "min_weight", "1.5"),
        (lambda: DPSW(min_weight=-0.5), "min_weight", "-0.5"),
        (lambda: DPSW(base="reverse_kl"), "base", "'reverse_kl'"),
        (lambda: generalized_jsd(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), beta=2.0), "beta", "2.0"),
        (lambda: teacher_confidence_view(torch.zeros(1, 1, 2), top_k=1), "top_k", "1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build, argument, value):
    with pytest.raises(ValueError) as excinfo:
        build()
    assert argument in str(excinfo.value) and value in str(excinfo.value)


def test_shape_mismatches_raise_value_error():
    logits, ids, mask = torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3)
    with pytest.raises(ValueError, match="same shape"):
        ReverseKL()(logits, torch.zeros(1, 3, 5), ids, mask)
    with pytest.raises(ValueError, match="completion_mask"):
        ReverseKL()(logits, logits, ids, torch.ones(1, 2))
    with pytest.raises(ValueError, match="completion_ids"):
        ReverseKL()(logits, logits, torch.zeros(1, 2, dtype=torch.long), mask)


def test_custom_views_replace_the_defaults(batch):
    student, teacher, ids, mask = batch
    # A teacher view of 1 everywhere and a student view of 0.5: w = 0.1 + 0.9 * 0.5 = 0.55 before normalising.
    dpsw = DPSW(
        teacher_view=lambda s, t, i: torch.ones(i.shape),
        student_view=lambda s, t, i: torch.full(i.shape, 0.5),
        normalize=False,
    )
    weights = dpsw.compute(student, teacher, ids, mask).weights
    assert torch.allclose(weights, torch.full((2, 5), 0.55))


# ------------------------------------------------------------------------------ -inf logits (issue 12, item 3)


def _logits_with_shared_minus_inf(dtype):
    torch.manual_seed(0)
    student = torch.randn(2, 3, 6, dtype=torch.float32)
    teacher = torch.randn(2, 3, 6, dtype=torch.float32)
    student[..., 4:] = float("-inf")  # a padded vocabulary both models mask
    teacher[..., 4:] = float("-inf")
    student[1, 2] = float("-inf")  # a masked position with nothing finite at all
    teacher[1, 2] = float("-inf")
    ids = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return student.to(dtype).requires_grad_(), teacher.to(dtype), ids, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "dpsw"])
def test_minus_inf_logits_give_finite_loss_and_gradients(name, dtype):
    # top_k=4: DPSW's teacher view then sees the same K finite entries with and without the masked vocabulary.
    divergence = get_divergence(name, top_k=4) if name == "dpsw" else get_divergence(name)
    student, teacher, ids, mask = _logits_with_shared_minus_inf(dtype)
    loss = divergence(student, teacher, ids, mask)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert (student.grad[..., 4:] == 0).all() and (student.grad[1, 2] == 0).all()
    # The -inf entries carry no probability: the loss equals the loss on the finite part of the vocabulary.
    reference = divergence(student.detach()[..., :4], teacher[..., :4], ids, mask)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_finite_logits_are_not_copied():
    from msd_trl.divergences import _finite_logits

    logits = torch.randn(2, 3, 5)
    assert _finite_logits(logits, torch.ones(2, 3)) is logits
