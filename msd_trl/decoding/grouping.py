"""Length grouping: which rows share a generate call, so one long prompt (a Bengali query is several times the
tokens of its English text) pads only its own batch."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["length_grouped"]


def length_grouped(
    lengths: Sequence[int],
    batch_size: int,
    *,
    groups: Sequence[Hashable] | None = None,
    descending: bool = True,
) -> list[list[int]]:
    """Row indices in batches of at most `batch_size`, rows of similar length together.

    Rows are sorted by `(group, length)` (longest first unless `descending=False`; ties keep input order) and cut
    into batches that never mix groups (e.g. generation budgets: one `max_new_tokens` per generate call).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    keys = list(groups) if groups is not None else [0] * len(lengths)
    if len(keys) != len(lengths):
        raise ValueError(f"groups has {len(keys)} entries for {len(lengths)} lengths")
    order = sorted(range(len(lengths)), key=lambda index: (keys[index], lengths[index]), reverse=descending)
    batches: list[list[int]] = []
    for index in order:
        if not batches or len(batches[-1]) == batch_size or keys[batches[-1][0]] != keys[index]:
            batches.append([])
        batches[-1].append(index)
    return batches
