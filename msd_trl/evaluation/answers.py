"""Answering evaluation jobs: one batched generate pass per character cap, every answer saved as it is made.

With a ``partial_path`` an interrupted evaluation resumes: answers already in the file (same job key: prompt,
kind, budget) are not generated again (``decoding.JsonLinesLog`` cuts off a half-written last line first).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..decoding import JsonLinesLog
from ..generation import generate_responses
from .jobs import job_key

logger = logging.getLogger(__name__)

__all__ = ["answer_jobs", "read_partial_responses"]


def read_partial_responses(path: str | Path) -> dict[str, str]:
    """Answers saved by an interrupted evaluation, by job key."""
    return {
        record["key"]: record["response"]
        for _, record in JsonLinesLog(path).records()
        if isinstance(record.get("key"), str) and "response" in record
    }


def answer_jobs(
    model: Any,
    tokenizer: Any,
    jobs: list[dict[str, Any]],
    *,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    progress: bool = True,
    partial_path: str | Path | None = None,
) -> list[str]:
    """The model's answer to every job, in job order (see `generate_responses` for batching and stopping)."""
    responses: list[str] = [""] * len(jobs)
    keys = [job_key(job) for job in jobs]
    done = read_partial_responses(partial_path) if partial_path is not None else {}
    for position, key in enumerate(keys):
        if key in done:
            responses[position] = done[key]
    if done:
        logger.info("resuming: %d of %d answers already in %s", sum(k in done for k in keys), len(jobs), partial_path)
    log = JsonLinesLog(partial_path) if partial_path is not None else None
    try:
        for chars in dict.fromkeys(job["max_chars"] for job in jobs):  # one generate call per character cap
            positions = [i for i, job in enumerate(jobs) if job["max_chars"] == chars and keys[i] not in done]
            if not positions:
                continue

            def save(indices: list[int], texts: list[str], positions=positions) -> None:
                if log is not None:
                    log.append({"key": keys[positions[i]], "response": text} for i, text in zip(indices, texts))

            generated = generate_responses(
                model,
                tokenizer,
                [jobs[i]["messages"] for i in positions],
                max_new_tokens=[jobs[i]["budget"] for i in positions],
                max_chars=chars,
                batch_size=batch_size,
                do_sample=do_sample,
                temperature=temperature,
                progress=progress,
                on_batch=save,
            )
            for position, response in zip(positions, generated):
                responses[position] = response
    finally:
        if log is not None:
            log.close()
    return responses
