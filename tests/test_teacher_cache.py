"""msd_trl.teacher_cache: top-K columns, the dense rebuild, and the fingerprint check (no trainer needed)."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from msd_trl.teacher_cache import (
    add_topk_columns,
    check_topk_cache,
    dense_from_topk,
    stale_topk_reason,
    topk_columns,
    topk_key,
)


def test_topk_at_k_equal_v_rebuilds_the_exact_distribution():
    logits = torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ids, logprobs = topk_columns(logits, mask, top_k=6)
    assert [len(r) for r in ids] == [3, 2] and all(len(t) == 6 for r in ids for t in r)
    dense = dense_from_topk(torch.tensor(ids[0]).unsqueeze(0), torch.tensor(logprobs[0]).unsqueeze(0), 6)
    torch.testing.assert_close(dense[0], logits[0].log_softmax(-1), atol=1e-6, rtol=0)


def test_dense_from_topk_keeps_the_topk_and_spreads_the_rest():
    logits = torch.tensor([[[4.0, 3.0, 0.0, 0.0, 0.0]]])
    ids, logprobs = topk_columns(logits, torch.ones(1, 1, dtype=torch.long), top_k=2)
    dense = dense_from_topk(torch.tensor(ids), torch.tensor(logprobs), 5)
    exact = logits.log_softmax(-1)
    torch.testing.assert_close(dense[0, 0, :2], exact[0, 0, :2])
    torch.testing.assert_close(dense[0, 0].exp().sum(), torch.tensor(1.0))
    assert torch.allclose(dense[0, 0, 2:], dense[0, 0, 2])  # leftover mass spread evenly


def test_cache_columns_are_checked_against_the_setting_that_made_them():
    dataset = Dataset.from_list([{"prompt": "x"}])
    setting = {"teacher": "m", "teacher_weights": "ab", "top_k": 4, "system_prompt": "Be safe."}
    cached = add_topk_columns(dataset, [[[1, 2]]], [[[-0.1, -2.0]]], setting, [topk_key([7, 8], [1])])
    assert json.loads(cached[0]["teacher_topk_fingerprint"]) == setting
    check_topk_cache(cached, top_k=4, expected=setting)
    with pytest.raises(ValueError, match="teacher_cache_top_k=None"):
        check_topk_cache(cached, top_k=None, expected=setting)
    with pytest.raises(ValueError, match="another setting: system_prompt"):
        check_topk_cache(cached, top_k=4, expected={**setting, "system_prompt": "Other."})
    # Another teacher's weights: the digest differs, and the message names the model then and now.
    with pytest.raises(ValueError, match=r"teacher_weights: cached 'ab', now 'cd'; teacher: cached 'm', now 'm'"):
        check_topk_cache(cached, top_k=4, expected={**setting, "teacher_weights": "cd"})
    for column in ("teacher_topk_fingerprint", "teacher_topk_key"):
        with pytest.raises(ValueError, match="carry no fingerprint or row keys"):
            check_topk_cache(cached.remove_columns(column), top_k=4, expected=setting)


def test_a_row_key_tells_a_changed_context_from_a_changed_completion():
    key = topk_key([7, 8, 9], [1, 2])
    assert stale_topk_reason(key, [7, 8, 9], [1, 2]) is None
    assert stale_topk_reason(None, [7], [1]) is None  # no key: nothing to compare (checked per dataset instead)
    assert "another teacher context" in stale_topk_reason(key, [7, 8], [1, 2])
    assert "another teacher_completion" in stale_topk_reason(key, [7, 8, 9], [1, 3])
