"""msd_trl.chunked_loss: the chunked divergence equals the plain one (loss, weights and gradients)."""

from __future__ import annotations

import pytest
import torch

from msd_trl.chunked_loss import chunked_divergence
from msd_trl.divergences import DPSW, ForwardKL, GeneralizedJSD, ReverseKL

B, T, H, V = 2, 7, 8, 50


def _setup(seed: int = 0, minus_inf: bool = False, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(B, T, H, generator=generator, dtype=dtype).requires_grad_()
    head = torch.nn.Linear(H, V, bias=False, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=generator, dtype=dtype))
    teacher_logits = 3 * torch.randn(B, T, V, generator=generator, dtype=dtype)
    if minus_inf:
        teacher_logits[..., :5] = float("-inf")  # a masked vocabulary slice
    ids = torch.randint(0, V, (B, T), generator=generator)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # a shorter second completion
    return student_hidden, head, teacher_logits, ids, mask


DIVERGENCES = {
    "reverse_kl": lambda: ReverseKL(),
    "forward_kl": lambda: ForwardKL(),
    "jsd": lambda: GeneralizedJSD(beta=0.3),
    "dpsw": lambda: DPSW(ReverseKL(), top_k=5),
    "dpsw_unnormalised": lambda: DPSW(ForwardKL(), top_k=5, normalize=False),
    "dpsw_temperature": lambda: DPSW(ReverseKL(), top_k=5, temperature=2.0),
}


@pytest.mark.parametrize("chunk_size", [1, 3, T, T + 5])
@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_loss_equals_the_plain_loss_and_gradients(name, chunk_size, dtype):
    """To 1e-6 in float64 (the algorithm is exact: only the order of the sums changes); in float32 the same to
    float32's rounding of large terms (a -inf teacher slice makes reverse-KL terms of ~1e4)."""
    divergence = DIVERGENCES[name]()
    hidden, head, teacher_logits, ids, mask = _setup(minus_inf=name == "reverse_kl", dtype=dtype)
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    plain = divergence.compute(head(hidden), teacher_logits, ids, mask, num_items_in_batch=11)
    plain.loss.backward()
    plain_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    chunked = chunked_divergence(divergence, hidden, head, lambda positions: teacher_logits[:, positions], ids, mask,
                                 chunk_size=chunk_size, num_items_in_batch=11)  # fmt: skip
    chunked.loss.backward()
    torch.testing.assert_close(chunked.loss, plain.loss, **tolerance)
    torch.testing.assert_close(chunked.weights, plain.weights, **tolerance)
    torch.testing.assert_close(chunked.per_token_loss, plain.per_token_loss.detach(), **tolerance)
    torch.testing.assert_close(hidden.grad, plain_grads[0], **tolerance)
    torch.testing.assert_close(head.weight.grad, plain_grads[1], **tolerance)
    expected_agreement = head(hidden).argmax(-1) == teacher_logits.argmax(-1)
    assert torch.equal(chunked.agreement, expected_agreement)


def test_chunked_loss_keeps_only_a_chunk_of_logits_for_backward():
    hidden, head, teacher_logits, ids, mask = _setup()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        chunked_divergence(ReverseKL(), hidden, head, lambda positions: teacher_logits[:, positions], ids, mask,
                           chunk_size=2)  # fmt: skip
    assert max(saved) < B * T * V  # no full [B, T, V] tensor waits for backward
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ReverseKL().compute(head(hidden), teacher_logits, ids, mask)
    assert max(saved) >= B * T * V  # the plain path does keep one


def test_chunked_loss_rejects_bad_shapes():
    hidden, head, teacher_logits, ids, mask = _setup()
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_divergence(ReverseKL(), hidden, head, lambda p: teacher_logits[:, p], ids, mask, chunk_size=0)
    with pytest.raises(ValueError, match="must be \\[B, T, H\\]"):
        chunked_divergence(ReverseKL(), hidden[:, :3], head, lambda p: teacher_logits[:, p], ids, mask, chunk_size=2)
