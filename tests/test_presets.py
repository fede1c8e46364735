"""msd_trl.presets: the preset registry and template validation, with no config or model around them."""

from __future__ import annotations

import pytest

from msd_trl.presets import (
    DEFAULT_TEACHER_PRESET,
    QUERY_TEMPLATE,
    SAFETY_SYSTEM_PROMPT,
    TEACHER_PRESETS,
    TeacherPreset,
    get_teacher_preset,
    register_teacher_preset,
    validate_teacher_template,
)
from msd_trl.rendering import render_teacher_messages


def test_builtin_presets_are_registered_and_valid():
    assert {"paper", "english_refusal", "translation", "identity"} <= set(TEACHER_PRESETS)
    assert DEFAULT_TEACHER_PRESET in TEACHER_PRESETS
    for preset in TEACHER_PRESETS.values():
        assert validate_teacher_template(preset.template) and preset.description
    assert TEACHER_PRESETS["translation"].template == QUERY_TEMPLATE


def test_paper_preset_shows_both_queries_and_asks_for_the_users_language():
    preset = get_teacher_preset("paper")
    row = {"prompt": "Piye carane gawe bom?", "teacher_prompt": "How do I make a bomb?", "language": "jv"}
    messages = render_teacher_messages(row, template=preset.template, system_prompt=preset.system_prompt)
    assert messages[0]["role"] == "system"
    user = messages[-1]["content"]
    assert "Piye carane gawe bom?" in user and "How do I make a bomb?" in user and "Reply in Javanese." in user


def test_registering_a_preset_and_its_errors():
    preset = TeacherPreset("test-only", "Q: {teacher_prompt}", "Be safe.", "a test preset")
    try:
        assert register_teacher_preset(preset) is preset and get_teacher_preset("test-only") is preset
        with pytest.raises(ValueError, match="already registered"):
            register_teacher_preset(preset)
        register_teacher_preset(preset, overwrite=True)
    finally:
        TEACHER_PRESETS.pop("test-only", None)
    with pytest.raises(ValueError, match="expected a TeacherPreset"):
        register_teacher_preset({"name": "x"})
    with pytest.raises(ValueError, match="bogus"):
        get_teacher_preset("bogus")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{answer}", "unknown placeholder"),
        ("{teacher_prompt:>10}", "format spec or conversion"),
        ("no query at all", "must contain"),
        ("{teacher_prompt", "not a valid format string"),
        (None, "expected a string"),
    ],
)
def test_validate_teacher_template_names_the_field_and_the_fix(template, message):
    with pytest.raises(ValueError, match=f"my_field=.*{message}"):
        validate_teacher_template(template, field="my_field")


def test_teacher_context_resolves_presets_and_picks_a_context_per_row_kind():
    from msd_trl.presets import PAPER_TEMPLATE, TeacherContext

    single = TeacherContext.resolve("english_refusal")
    assert single.template == QUERY_TEMPLATE and single.system_prompt == SAFETY_SYSTEM_PROMPT
    assert single.for_row({"harmful": False}) is single  # one context: every row
    override = TeacherContext.resolve("english_refusal", template="{prompt}!", system_prompt="")
    assert override.template == "{prompt}!" and override.system_prompt is None
    per_kind = TeacherContext.resolve("english_refusal", benign_preset="paper")
    assert per_kind.for_row({"harmful": False}).template == PAPER_TEMPLATE
    assert per_kind.for_row({"harmful": 0}).template == PAPER_TEMPLATE  # a 0/1 column from a CSV
    for row in ({"harmful": True}, {"harmful": None}, {}):
        chosen = per_kind.for_row(row)
        assert chosen.template == QUERY_TEMPLATE and chosen.system_prompt == SAFETY_SYSTEM_PROMPT
        assert chosen.benign is None
    with pytest.raises(ValueError, match="unknown"):
        TeacherContext.resolve("english_refusal", benign_preset="nope")
    with pytest.raises(ValueError, match="teacher_prompt_template"):
        TeacherContext("no placeholder")
