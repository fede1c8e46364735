"""Prompt rendering: one MSD row -> the student's and the teacher's model inputs.

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

from typing import Any

from .data import LANGUAGE_NAMES
from .presets import UNKNOWN_LANGUAGE_NAME

__all__ = [
    "completion_token_ids",
    "message_text",
    "render_student_messages",
    "render_teacher_messages",
    "stop_token_ids",
    "tokenize_messages",
]

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


def render_teacher_messages(
    row: dict[str, Any], *, template: str = "{teacher_prompt}", system_prompt: str | None = None
) -> Messages:
    """The teacher's privileged conversation for a row (see the module docstring). A `system_prompt` of `""` means
    none; a row without `language` fills `{language}` with "the language of the original request"."""
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
        language_name = LANGUAGE_NAMES.get(language, language) or UNKNOWN_LANGUAGE_NAME
        user_turn = template.format(
            prompt=student_text, teacher_prompt=message_text(row["teacher_prompt"]), language=language_name
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
    stop_token_ids: list[int],
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
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + stop_token_ids[:1]
    for i, token in enumerate(ids):
        if token in stop_token_ids:
            return ids[: i + 1]
    return ids


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the model's generation-config EOS (int or list) and the tokenizer's EOS."""
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
