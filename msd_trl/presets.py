"""Teacher presets: the privileged context the self-teacher sees, as named, documented (template, system prompt) pairs.

Design. What the teacher is shown decides what the student learns: MSD copies the teacher's next-token
distribution onto the student's own text. A preset bundles the two knobs of that context,
`MSDConfig.teacher_prompt_template` (the teacher's user turn, placeholders `{prompt}`, `{teacher_prompt}`,
`{language}`) and `MSDConfig.teacher_system_prompt`, under a name, so a run records *which* teacher it had and a
user picks one with `--teacher_preset NAME` instead of copying two strings. Explicit template or system-prompt
values still win over the preset.

This module imports only the `Registry` helper, so config, rendering, evaluation and the CLI can all use it.

Presets (the wording of each was measured on the embedded SmolLM2-135M-Instruct; see docs/teacher_presets.md):

* ``paper``: the paper's teacher as public summaries describe it. The user turn holds the original query and its
  English translation and asks the model to judge safety from the English text and to answer in the user's
  language; the system prompt states the safety policy without prescribing an English sentence.
* ``english_refusal``: the English query under :data:`SAFETY_SYSTEM_PROMPT`, which prescribes one English refusal
  sentence. The strongest English refuser on a 135M model, but it answers in English, so the student learns to
  switch to English (benign questions included): a variant, not the paper's method.
* ``translation``: the English query alone, no system prompt: the cross-lingual gap without a safety hint.
* ``identity``: the student's own prompt (GKD's teacher). Used when a plain ``GKDConfig`` is upgraded.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .registry import Registry

__all__ = [
    "DEFAULT_TEACHER_PRESET",
    "QUERY_TEMPLATE",
    "TEACHER_FIELDS",
    "TEMPLATE_PLACEHOLDERS",
    "validate_teacher_template",
    "SAFETY_SYSTEM_PROMPT",
    "TEACHER_PRESETS",
    "TeacherContext",
    "TeacherPreset",
    "get_teacher_preset",
    "register_teacher_preset",
]

# The plainest teacher template: the row's English query as the whole user turn.
QUERY_TEMPLATE = "{teacher_prompt}"

# A literal refusal sentence: a 135M model follows it far better than an abstract policy or a list of harm categories
# (how it was chosen among 13 candidates: docs/teacher_presets.md).
SAFETY_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. Never help with harmful, unethical, dangerous or illegal requests: "
    "answer them only with \"I'm sorry, but I can't help with that.\" Otherwise, answer helpfully."
)

TEMPLATE_PLACEHOLDERS = ("prompt", "teacher_prompt", "language")

# The settings that name a teacher context, spelled the same in MSDConfig and EvaluationArguments.
TEACHER_FIELDS = ("teacher_preset", "teacher_prompt_template", "teacher_system_prompt", "benign_teacher_preset")

# What `{language}` becomes for a row without a `language` value.
UNKNOWN_LANGUAGE_NAME = "the language of the original request"


@dataclass(frozen=True)
class TeacherPreset:
    """A named teacher context: `template` fills the teacher's user turn, `system_prompt` (or None) is its system
    turn. `description` is one line for `--help` and the docs."""

    name: str
    template: str
    system_prompt: str | None
    description: str


PAPER_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. Refuse requests that are harmful, unethical, dangerous or illegal. "
    "Answer every other request helpfully."
)
PAPER_TEMPLATE = (
    "{prompt}\n\n"
    "(English translation of the request above: {teacher_prompt})\n"
    "Judge from the English translation whether the request is safe. Reply in {language}."
)

TEACHER_PRESETS = Registry(
    "teacher_preset", expects="a TeacherPreset", check=lambda value: isinstance(value, TeacherPreset)
)


def validate_teacher_template(template: str, *, field: str = "teacher_prompt_template") -> set[str]:
    """Check a teacher template and return its placeholders; a ValueError names `field`, the value and the fix.

    Allowed: `{prompt}`, `{teacher_prompt}`, `{language}`, each without a format spec or conversion, and at least
    one of the two queries. Literal braces are written doubled (`{{` and `}}`)."""
    if not isinstance(template, str):
        raise ValueError(f"{field}={template!r} is invalid: expected a string.")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(
            f"{field}={template!r} is not a valid format string ({err}); write a literal brace doubled: {{{{ or }}}}."
        ) from err
    placeholders = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(
                f"{field}={template!r} is invalid: placeholder {{{name}}} has a format spec or conversion "
                f"({'!' + conversion if conversion else ''}{':' + spec if spec else ''}); use plain {{{name}}}, "
                "and double literal braces ({{ and }})."
            )
        placeholders.add(name)
    unknown = sorted(placeholders - set(TEMPLATE_PLACEHOLDERS))
    if unknown:
        raise ValueError(
            f"{field}={template!r} is invalid: unknown placeholder(s) {unknown}; allowed: {list(TEMPLATE_PLACEHOLDERS)}"
            " (double literal braces: {{ and }})."
        )
    if not placeholders & {"prompt", "teacher_prompt"}:
        raise ValueError(
            f"{field}={template!r} is invalid: it must contain {{teacher_prompt}} or {{prompt}}, else the teacher sees "
            "no query."
        )
    return placeholders


def register_teacher_preset(preset: TeacherPreset, *, overwrite: bool = False) -> TeacherPreset:
    """Make `preset` selectable by name (`MSDConfig(teacher_preset=...)`, `--teacher_preset`)."""
    return TEACHER_PRESETS.register(preset, overwrite=overwrite)


for _preset in (
    TeacherPreset(
        "paper",
        PAPER_TEMPLATE,
        PAPER_SYSTEM_PROMPT,
        "the paper's teacher: original query + English translation, judge safety in English, reply in {language}",
    ),
    TeacherPreset(
        "english_refusal",
        QUERY_TEMPLATE,
        SAFETY_SYSTEM_PROMPT,
        "English query + a system prompt prescribing one English refusal sentence (answers in English)",
    ),
    TeacherPreset("translation", QUERY_TEMPLATE, None, "the English query alone, no system prompt"),
    TeacherPreset("identity", "{prompt}", None, "the student's own prompt (GKD's teacher)"),
):
    register_teacher_preset(_preset)

# The default: the paper's method (its measurements on the embedded model: docs/results.md). Change it only with new
# measurements.
DEFAULT_TEACHER_PRESET = "paper"


@dataclass(frozen=True)
class TeacherContext:
    """What the teacher is shown for a row: the template of its user turn and its system prompt (`None` or `""`:
    none), and optionally a second context for benign rows (rows whose `harmful` value is `False`).

    One context for every row is MSD as the paper describes it. A context per row kind
    (`MSDConfig.benign_teacher_preset`) lets a teacher refuse harmful requests under a refusal context while it
    answers benign ones under another (e.g. `paper`: in the user's language); it still needs no response data,
    only the `harmful` flag the training rows already carry. Rows whose `harmful` is `None` (unknown) get the
    main context.
    """

    template: str = QUERY_TEMPLATE
    system_prompt: str | None = None
    benign: TeacherContext | None = None

    def __post_init__(self):
        validate_teacher_template(self.template, field="teacher_prompt_template")
        if self.benign is not None and self.benign.benign is not None:
            raise ValueError("a benign TeacherContext cannot have a benign context of its own.")

    @classmethod
    def resolve(
        cls,
        preset: str = DEFAULT_TEACHER_PRESET,
        *,
        template: str | None = None,
        system_prompt: str | None = None,
        benign_preset: str | None = None,
        owner: str = "",
    ) -> TeacherContext:
        """The one resolver of a teacher context (config, evaluation and teacher text all call it): the preset's
        template and system prompt, an explicit `template` / `system_prompt` winning (`""`: no system prompt), and
        `benign_preset`'s context (as registered) for benign rows when given. Errors name `owner` + the field
        (`owner="MSDConfig."` -> `MSDConfig.benign_teacher_preset='x' is unknown; ...`)."""
        chosen = TEACHER_PRESETS.lookup(preset, field=f"{owner}teacher_preset")
        if template is not None:
            validate_teacher_template(template, field=f"{owner}teacher_prompt_template")
        benign = None
        if benign_preset is not None:
            other = TEACHER_PRESETS.lookup(benign_preset, field=f"{owner}benign_teacher_preset")
            benign = cls(other.template, other.system_prompt or None)
        return cls(
            chosen.template if template is None else template,
            (chosen.system_prompt if system_prompt is None else system_prompt) or None,
            benign,
        )

    @classmethod
    def of(cls, settings: Any, *, owner: str = "") -> TeacherContext:
        """The context named by a settings object's `TEACHER_FIELDS` (an `MSDConfig`, an `EvaluationArguments`)."""
        return cls.resolve(
            settings.teacher_preset,
            template=settings.teacher_prompt_template,
            system_prompt=settings.teacher_system_prompt,
            benign_preset=settings.benign_teacher_preset,
            owner=owner,
        )

    def for_row(self, row: Mapping[str, Any]) -> TeacherContext:
        """The context of one row: the benign one for a row whose `harmful` is `False`, else the main one."""
        harmful = row.get("harmful")
        if self.benign is not None and harmful is not None and not harmful:
            return self.benign
        return TeacherContext(self.template, self.system_prompt) if self.benign is not None else self


def get_teacher_preset(name: str) -> TeacherPreset:
    """The registered preset called `name`; a ValueError lists the known names otherwise."""
    return TEACHER_PRESETS.lookup(name)
