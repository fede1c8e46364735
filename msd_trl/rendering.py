"""Prompt rendering: one MSD row -> messages -> token ids -> a padded batch (`MSDDataCollator`).

Design: rows carry a `prompt` (the target-language query the student sees) and optionally a `teacher_prompt`
(the English query), each a plain string or a list of chat messages. Rendering turns them into chat messages and
then token ids, in one place shared by the trainers, teacher-text generation and evaluation, so the teacher sees
exactly the same context everywhere.

* Student: the row's `prompt` (a string becomes one user turn). A GKD-style `messages` row uses every message
  but the last (the last is the fixed completion).
* Teacher: the student's conversation with its last user turn replaced by
  `teacher_prompt_template.format(prompt=..., teacher_prompt=..., language=...)`, and the optional
  `teacher_system_prompt` as the system turn (both usually from a preset, `msd_trl.presets`). A row with no
  `teacher_prompt` has no English query to show, so the template is not applied: the teacher reads the student's
  query, and with no system prompt exactly the student's conversation (GKD's behaviour).
* A tokenizer without a chat template gets plain text: the system prompt and the user turns joined by blank lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .decoding import cut_at_stop, left_padded, pad
from .names import (
    TEACHER_CACHE_IDS,
    TEACHER_CACHE_KEY,
    TEACHER_CACHE_LOGPROBS,
    TEACHER_COMPLETION_COLUMN,
    language_name,
)
from .presets import QUERY_TEMPLATE, UNKNOWN_LANGUAGE_NAME, TeacherContext, validate_teacher_template
from .teacher_cache import stale_topk_reason

__all__ = [
    "MSDDataCollator",
    "completion_token_ids",
    "fit_conversation",
    "message_text",
    "render_prompt",
    "render_student_messages",
    "render_teacher_messages",
    "tokenize_messages",
]

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


def message_text(value: Any) -> str:
    """The text of a query: a string as is, or the content of the last user turn of a message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for message in reversed(value):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return str(value[-1].get("content", ""))
    raise ValueError(f"a prompt must be a string or a list of chat messages, got {type(value).__name__}: {value!r}")


def _as_messages(value: Any) -> Messages:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    message_text(value)  # validates the shape
    return [dict(m) for m in value]


def render_student_messages(row: dict[str, Any]) -> Messages:
    """The student's conversation for a row (`prompt`, or `messages` minus its last turn)."""
    if row.get("prompt") is not None:
        return _as_messages(row["prompt"])
    if row.get("messages"):
        return _as_messages(row["messages"][:-1])
    raise ValueError(f"row {row.get('id', '?')!r} has neither a 'prompt' nor a 'messages' column.")


def render_prompt(prompt: str | Sequence[Mapping[str, str]], system_prompt: str | None = None) -> Messages:
    """One prompt (a string or chat messages) as a conversation, with `system_prompt` as its system turn; a
    conversation that brings its own system message keeps it (it is part of the prompt being evaluated), and
    `None` adds none (the chat template's default applies)."""
    messages = render_student_messages({"prompt": prompt if isinstance(prompt, str) else list(prompt)})
    if system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_teacher_messages(
    row: dict[str, Any],
    *,
    template: str = QUERY_TEMPLATE,
    system_prompt: str | None = None,
    context: TeacherContext | None = None,
) -> Messages:
    """The teacher's privileged conversation for a row (see the module docstring). A `system_prompt` of `""` means
    none; a row without `language` fills `{language}` with "the language of the original request". A `context`
    (which may hold a second context for benign rows) replaces `template` and `system_prompt`."""
    if context is not None:
        chosen = context.for_row(row)
        template, system_prompt = chosen.template, chosen.system_prompt
    system_prompt = system_prompt or None
    student = render_student_messages(row)
    has_teacher_prompt = row.get("teacher_prompt") is not None
    # Without an English query there is no translation to show: the template is not applied and the teacher reads
    # the student's own query (GKD's teacher), under the system prompt if there is one.
    if (template == "{prompt}" or not has_teacher_prompt) and system_prompt is None:
        return student
    student_text = message_text(student)
    if has_teacher_prompt:
        language = row.get("language") or ""
        # A code langcodes cannot name is an error (never "Reply in xx."); no language at all has a neutral name.
        name = language_name(language) if language else UNKNOWN_LANGUAGE_NAME
        user_turn = template.format(
            prompt=student_text, teacher_prompt=message_text(row["teacher_prompt"]), language=name
        )
    else:
        user_turn = student_text
    # Keep earlier turns of a multi-turn prompt, swap the last user turn, and put our system prompt first.
    last_user = max((i for i, m in enumerate(student) if m.get("role") == "user"), default=len(student))
    history = [m for m in student[:last_user] if not (system_prompt is not None and m.get("role") == "system")]
    messages = history + [{"role": "user", "content": user_turn}]
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def tokenize_messages(tokenizer, messages: Messages, *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation: the chat template when the tokenizer has one, else plain joined text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "\n\n".join(str(m["content"]) for m in messages)
    if add_generation_prompt:
        text += "\n\n"
    return tokenizer(text)["input_ids"]


def completion_token_ids(
    tokenizer,
    prompt_messages: Messages,
    completion: str,
    stop_ids: list[int],
    *,
    prompt_length: int | None = None,
) -> list[int]:
    """Token ids of a fixed assistant completion, ending at (and including) the first stop token.

    With a chat template the completion is the template's assistant turn (so it ends with the end-of-turn token,
    exactly as on-policy rollouts do); without one it is the plain text plus the first stop token. A caller that
    already tokenised the prompt passes its (untruncated) `prompt_length` so it is not tokenised again.
    """
    if getattr(tokenizer, "chat_template", None):
        if prompt_length is None:
            prompt_length = len(tokenize_messages(tokenizer, prompt_messages, add_generation_prompt=True))
        full_ids = tokenize_messages(
            tokenizer,
            prompt_messages + [{"role": "assistant", "content": completion}],
            add_generation_prompt=False,
        )
        ids = full_ids[prompt_length:]
    else:
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + stop_ids[:1]
    return cut_at_stop(ids, stop_ids)


# ------------------------------------------------------------------------------------------ batch (collator)


def _last_user_turn(turns: Sequence[dict[str, Any]]) -> int | None:
    return max((i for i, turn in enumerate(turns) if turn.get("role") == "user"), default=None)


def _query_turns(row: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The turns of a conversation field whose last user turn is the query (`messages`: all but the completion)."""
    return list(row[key][:-1] if key == "messages" else row[key])


def _query_text(row: dict[str, Any], key: str) -> str | None:
    """The query text of `row[key]` that truncation may shorten: a string, or the last user turn of a conversation;
    `None` when the field is empty or has no user turn."""
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    turns = _query_turns(row, key)
    index = _last_user_turn(turns)
    return None if index is None else str(turns[index].get("content", ""))


def _with_query_texts(row: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """A copy of `row` whose query texts (`prompt`, `teacher_prompt`, or the last user turn of `messages` before its
    completion) are `texts`."""
    row = dict(row)
    for key, text in texts.items():
        value = row[key]
        if isinstance(value, str):
            row[key] = text
            continue
        turns = [dict(turn) for turn in value]
        turns[_last_user_turn(_query_turns(row, key))]["content"] = text
        row[key] = turns
    return row


def fit_conversation(
    tokenizer,
    row: dict[str, Any],
    render: Callable[[dict[str, Any]], Messages],
    *,
    who: str,
    max_prompt_length: int | None,
    prompt_truncation: str = "left",
) -> tuple[Messages, list[int]]:
    """Render and tokenise one side's conversation within `max_prompt_length`: the one truncation rule of msd_trl
    (the collator, teacher-text generation and the top-K cache all call it). Returns `(messages, ids)`, where `ids`
    is exactly `tokenize_messages(tokenizer, messages)`.

    Only the user's query text is shortened, from its start: `prompt` (or the last user turn of a chat `prompt`, or
    of a GKD `messages` row before its completion) and, for the teacher (`who="teacher"`), `teacher_prompt`. The
    system prompt, the teacher template and earlier turns are never cut: left truncation of the rendered tokens used
    to drop the teacher's privileged context first. A row whose conversation cannot fit that way (the template,
    system prompt and earlier turns alone are too long), or any long row under `prompt_truncation="error"`, is a
    `ValueError` naming the row.
    """
    messages = render(row)
    ids = tokenize_messages(tokenizer, messages)
    limit = max_prompt_length
    if limit is None or len(ids) <= limit:
        return messages, ids
    message = f"row {row.get('id', '?')!r}: the {who} prompt has {len(ids)} tokens, over max_prompt_length={limit}"
    if prompt_truncation == "error":
        raise ValueError(message + " (prompt_truncation='error'); filter long rows or raise the limit.")
    # Only the queries this conversation shows (the student's: its own; the teacher's: also `teacher_prompt`).
    student_field = "prompt" if row.get("prompt") is not None else "messages"
    keys = (student_field, "teacher_prompt") if who == "teacher" else (student_field,)
    fields = {key: text for key in keys if (text := _query_text(row, key)) is not None}
    keep_at_least = 4  # tokens of each query that are never cut
    for _ in range(16):  # each pass cuts the longest query by the overflow; converges in 1-3 passes
        overflow = len(ids) - limit
        if overflow <= 0:
            logger.warning("%s; shortened the start of its query text to fit.", message)
            return messages, ids
        token_ids = {key: tokenizer(text, add_special_tokens=False)["input_ids"] for key, text in fields.items()}
        longest = max(token_ids, key=lambda key: len(token_ids[key]), default=None)
        if longest is None or len(token_ids[longest]) <= keep_at_least:
            break
        cut = min(overflow + 1, len(token_ids[longest]) - keep_at_least)
        fields[longest] = tokenizer.decode(token_ids[longest][cut:], skip_special_tokens=True)
        messages = render(_with_query_texts(row, fields))
        ids = tokenize_messages(tokenizer, messages)
    raise ValueError(
        f"{message}, and the query text cannot be shortened enough: the template and system prompt alone (with any "
        "earlier turns of the conversation) take most of it. Raise max_prompt_length, shorten "
        "teacher_system_prompt / teacher_prompt_template, or drop the row."
    )


class MSDDataCollator:
    """Rows -> left-padded student and teacher prompts, plus right-padded fixed completions when rows have them.

    Output keys: `prompt_ids`, `prompt_mask` `[B, Lp]`; `teacher_prompt_ids`, `teacher_prompt_mask` `[B, Lt]`;
    when every row has a fixed completion (`completion_column`, or the last turn of `messages`):
    `fixed_completion_ids`, `fixed_completion_mask` `[B, Lc]`; and `row_ids` (a list, for messages).
    Prompts over `max_prompt_length` are shortened at the start of their query text, never in the system prompt or
    template (`fit_conversation`), with a warning naming the row (or raise with `prompt_truncation="error"`); a
    fixed completion is never truncated by the prompt limit. Rows with cached teacher top-K columns are checked
    against the teacher prompt and completion they have now (`teacher_cache.stale_topk_reason`).
    """

    def __init__(
        self,
        tokenizer,
        *,
        teacher_prompt_template: str = QUERY_TEMPLATE,
        teacher_system_prompt: str | None = None,
        max_prompt_length: int | None = None,
        prompt_truncation: str = "left",
        completion_column: str = TEACHER_COMPLETION_COLUMN,
        stop_ids: list[int] | None = None,
        teacher_context: TeacherContext | None = None,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token).")
        validate_teacher_template(teacher_prompt_template, field="teacher_prompt_template")
        self.tokenizer = tokenizer
        self.teacher_prompt_template = teacher_prompt_template
        self.teacher_system_prompt = teacher_system_prompt
        # A context per row kind (harmful / benign) when given; it replaces the template and system prompt.
        self.teacher_context = teacher_context
        self.max_prompt_length = max_prompt_length
        self.prompt_truncation = prompt_truncation
        self.completion_column = completion_column
        self.stop_ids = stop_ids if stop_ids is not None else [tokenizer.eos_token_id]

    def fit(self, row: dict[str, Any], who: str) -> tuple[list, list[int]]:
        """`(messages, ids)` of the row's `who` ("student" or "teacher") prompt within `max_prompt_length`, by the
        one truncation rule (`fit_conversation`)."""
        render = self._render_teacher if who == "teacher" else render_student_messages
        return fit_conversation(
            self.tokenizer, row, render, who=who, max_prompt_length=self.max_prompt_length,
            prompt_truncation=self.prompt_truncation,
        )  # fmt: skip

    def _render_teacher(self, row: dict[str, Any]) -> list:
        return render_teacher_messages(
            row,
            template=self.teacher_prompt_template,
            system_prompt=self.teacher_system_prompt,
            context=self.teacher_context,
        )

    def _fixed_completion(self, row: dict[str, Any]) -> str | None:
        value = row.get(self.completion_column)
        if value is None and row.get("messages") and row.get("prompt") is None:
            value = row["messages"][-1].get("content")
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"row {row.get('id', '?')!r}: {self.completion_column} must be a string, got {value!r}.")
        return value

    def completion_ids(self, row: dict[str, Any]) -> list[int] | None:
        """Token ids of the row's fixed completion (an assistant turn after the untruncated student conversation,
        ending at its first stop id), or `None` when the row has none."""
        text = self._fixed_completion(row)
        if text is None:
            return None
        return completion_token_ids(self.tokenizer, render_student_messages(row), text, self.stop_ids)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompt_ids, teacher_ids, completions = [], [], []
        for row in rows:
            student = render_student_messages(row)
            if not any(str(m.get("content", "")).strip() for m in student):
                raise ValueError(f"row {row.get('id', '?')!r} has an empty prompt.")
            prompt_ids.append(self.fit(row, "student")[1])
            teacher_ids.append(self.fit(row, "teacher")[1])
            completions.append(self.completion_ids(row))

        batch: dict[str, Any] = {"row_ids": [row.get("id") for row in rows]}
        batch["prompt_ids"], batch["prompt_mask"] = left_padded(prompt_ids, self.tokenizer.pad_token_id)
        batch["teacher_prompt_ids"], batch["teacher_prompt_mask"] = left_padded(
            teacher_ids, self.tokenizer.pad_token_id
        )
        if all(c is not None for c in completions):
            tensors = [torch.tensor(c, dtype=torch.long) for c in completions]
            batch["fixed_completion_ids"] = pad(
                tensors, padding_value=self.tokenizer.pad_token_id, padding_side="right"
            )
            batch["fixed_completion_mask"] = pad([torch.ones_like(t) for t in tensors], padding_value=0)
            if all(row.get(TEACHER_CACHE_IDS) is not None for row in rows):
                batch.update(self._pad_teacher_cache(rows, teacher_ids, completions))
        return batch

    @staticmethod
    def _pad_teacher_cache(
        rows: list[dict[str, Any]], teacher_ids: list[list[int]], completions: list[list[int]]
    ) -> dict[str, torch.Tensor]:
        """Cached teacher top-K of each row -> `[B, Lc, K]` ids and log-probs, right-padded like the completions,
        after checking each row's cache key against the teacher prompt and completion it has now."""
        ids, logprobs = [], []
        for row, prompt, completion in zip(rows, teacher_ids, completions):
            reason = stale_topk_reason(row.get(TEACHER_CACHE_KEY), prompt, completion)
            if reason is not None:
                raise ValueError(f"row {row.get('id', '?')!r}: {reason}")
            row_ids = torch.tensor(row[TEACHER_CACHE_IDS], dtype=torch.long)  # [Lc_i, K]
            if row_ids.size(0) != len(completion):
                raise ValueError(
                    f"row {row.get('id', '?')!r}: the cached teacher top-K covers {row_ids.size(0)} tokens but the "
                    f"teacher_completion has {len(completion)}; the cache is stale, rebuild it with "
                    "OffPolicyMSDTrainer.cache_teacher_topk."
                )
            ids.append(row_ids)
            logprobs.append(torch.tensor(row[TEACHER_CACHE_LOGPROBS], dtype=torch.float32))
        return {
            TEACHER_CACHE_IDS: pad(ids, padding_value=0, padding_side="right"),
            TEACHER_CACHE_LOGPROBS: pad(logprobs, padding_value=0.0, padding_side="right"),
        }
