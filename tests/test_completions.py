"""msd_trl.completions: the pure pieces of a step, on small tensors (no trainer, no model but a stub)."""

from __future__ import annotations

import pytest
import torch

from msd_trl.completions import (
    STEP_STATISTICS,
    build_scoring_batch,
    completion_logits,
    generate_grouped,
    step_statistics,
)
from msd_trl.decoding import completion_mask, ends_with_stop
from msd_trl.divergences import DPSW, ReverseKL

EOS, PAD, END = 2, 0, 7


def test_completion_mask_keeps_up_to_the_first_of_several_stop_ids():
    ids = torch.tensor([[5, EOS, PAD, PAD], [5, 6, END, EOS], [5, 6, 6, 6]])
    assert completion_mask(ids, [EOS, END]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # pad == eos: the real EOS keeps its label, the padding after it does not.
    assert completion_mask(torch.tensor([[5, EOS, EOS, EOS]]), [EOS]).tolist() == [[1, 1, 0, 0]]


def test_ends_with_stop_tells_finished_from_clipped_and_empty():
    ids = torch.tensor([[5, EOS, PAD], [5, 6, 6], [EOS, PAD, PAD]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert ends_with_stop(ids, mask, [EOS]).tolist() == [True, False, False]


def _inputs(batch: int = 2, prompt: int = 3) -> dict[str, torch.Tensor]:
    return {
        "prompt_ids": torch.arange(batch * prompt).view(batch, prompt) + 10,
        "prompt_mask": torch.ones(batch, prompt, dtype=torch.long),
        "teacher_prompt_ids": torch.arange(batch * (prompt + 2)).view(batch, prompt + 2) + 50,
        "teacher_prompt_mask": torch.ones(batch, prompt + 2, dtype=torch.long),
    }


def test_scoring_batch_shares_the_completion_trims_padding_columns_and_carries_caches():
    inputs = _inputs()
    inputs["cache"] = torch.arange(2 * 4 * 3).view(2, 4, 3)  # per completion token, like cached top-K
    ids = torch.tensor([[5, 6, EOS, 9], [5, EOS, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = build_scoring_batch(inputs, ids, mask, pad_token_id=PAD, carry=("cache", "absent"))
    assert batch["completion_ids"].tolist() == [[5, 6, EOS], [5, EOS, PAD]]  # column 4 trimmed, masked -> pad
    assert batch["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert torch.equal(batch["input_ids"][:, -3:], batch["teacher_input_ids"][:, -3:])
    assert batch["input_ids"].shape == (2, 6) and batch["teacher_input_ids"].shape == (2, 8)
    assert torch.equal(batch["attention_mask"][:, 3:], batch["completion_mask"])
    assert torch.equal(batch["cache"], inputs["cache"][:, :3]) and "absent" not in batch


def test_scoring_batch_of_empty_completions_has_zero_columns():
    batch = build_scoring_batch(_inputs(), torch.full((2, 3), PAD), torch.zeros(2, 3, dtype=torch.long),
                                pad_token_id=PAD)  # fmt: skip
    assert batch["completion_ids"].shape == (2, 0) and batch["input_ids"].shape == (2, 3)


class _Recorder(torch.nn.Module):
    """Returns logits whose value at position t is t, and records the forward kwargs."""

    def __init__(self, vocab: int = 5):
        super().__init__()
        self.vocab, self.calls = vocab, []

    def forward(self, input_ids, attention_mask, use_cache, logits_to_keep=None):
        self.calls.append({"logits_to_keep": logits_to_keep, "use_cache": use_cache})
        length = input_ids.size(1) if logits_to_keep is None else logits_to_keep
        start = input_ids.size(1) - length
        logits = torch.arange(start, start + length, dtype=torch.float).view(1, -1, 1)
        return type("Out", (), {"logits": logits.expand(input_ids.size(0), -1, self.vocab)})()


@pytest.mark.parametrize("keep", [True, False])
def test_completion_logits_are_the_positions_that_predict_the_completion(keep):
    model = _Recorder()
    ids = torch.zeros(2, 7, dtype=torch.long)
    logits = completion_logits(model, ids, torch.ones_like(ids), 3, logits_to_keep=keep)
    # Tokens 4, 5, 6 are predicted by positions 3, 4, 5.
    assert logits.shape == (2, 3, 5) and logits[0, :, 0].tolist() == [3.0, 4.0, 5.0]
    assert model.calls == [{"logits_to_keep": 4 if keep else None, "use_cache": False}]


def test_step_statistics_hand_computed():
    student = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]]])  # argmax 0, 1, 0
    teacher = torch.tensor([[[3.0, 0.0], [3.0, 0.0], [0.0, 5.0]]])  # argmax 0, 0, 1
    mask = torch.tensor([[1, 1, 0]])
    output = ReverseKL().compute(student, teacher, torch.zeros(1, 3, dtype=torch.long), mask)
    values = dict(zip(STEP_STATISTICS, step_statistics(output, student, teacher, mask).tolist()))
    per_token = output.per_token_loss.detach()
    assert values["msd/divergence"] == pytest.approx(per_token[0, :2].sum().item() / 2)
    assert values["msd/loss"] == pytest.approx(values["msd/divergence"])  # unweighted: weights are 1
    assert values["msd/dpsw_weight_mean"] == values["msd/dpsw_weight_max"] == 1.0
    assert values["msd/teacher_student_top1_agreement"] == pytest.approx(0.5)  # the masked 3rd token not counted
    weighted = DPSW(ReverseKL(), top_k=2).compute(student, teacher, torch.zeros(1, 3, dtype=torch.long), mask)
    stats = dict(zip(STEP_STATISTICS, step_statistics(weighted, student, teacher, mask).tolist()))
    kept = weighted.weights[0, :2]
    assert stats["msd/dpsw_weight_max"] == pytest.approx(kept.max().item())
    assert stats["msd/loss"] == pytest.approx((weighted.per_token_loss[0, :2] * kept).sum().item() / 2)


def test_generate_grouped_splits_sorts_and_returns_each_row_its_own_completion():
    calls = []

    def generate(ids, mask):  # the "completion" is the prompt's last token, then a stop
        calls.append((ids.size(0), ids.size(1)))
        return torch.stack([ids[:, -1], torch.full_like(ids[:, -1], EOS)], 1), torch.ones(
            ids.size(0), 2, dtype=torch.long
        )

    first = (torch.tensor([[PAD, PAD, 11], [12, 13, 14]]), torch.tensor([[0, 0, 1], [1, 1, 1]]))
    second = (torch.tensor([[PAD, 15]]), torch.tensor([[0, 1]]))
    results = generate_grouped(generate, [first, second], pad_token_id=PAD)
    assert calls == [(3, 3)]  # one call for both batches, re-padded on the left to the longest prompt
    assert [r[0][:, 0].tolist() for r in results] == [[11, 14], [15]]
    calls.clear()
    results = generate_grouped(generate, [first, second], pad_token_id=PAD, rows_per_call=2)
    assert calls == [(2, 1), (1, 3)]  # the two one-token prompts together, padding columns dropped
    assert [r[0][:, 0].tolist() for r in results] == [[11, 14], [15]]
    assert generate_grouped(generate, [], pad_token_id=PAD) == []
