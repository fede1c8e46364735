"""The defaults the docs state are the code's: the tables of docs/cli.md (evaluate's `EvaluationArguments`, train's
`DataArguments` and the defaults the train parser sets) and CHANGELOG.md's old -> new table of `evaluate()`.

Tables are read as a user reads them: a row names one or more flags (a `--no_x` twin and a `(--alias)` name the same
setting) and gives one default, or one per flag separated by ", ". A default is a literal (`8`, `0.2`, `` `test` ``,
`` `sw,bn,th` ``, on / off / none / all) or words that describe a value computed at run time ("the preset's",
"embedded SmolLM2"), which the code must then hold as `None`.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from msd_trl.arguments import TEACHER_COMPLETIONS_FILE, DataArguments, build_train_parser
from msd_trl.evaluation import EvaluationArguments
from msd_trl.names import split_list

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
COMPUTED = object()  # a default described in words: computed at run time, `None` in the code


def _section(text: str, heading: str) -> str:
    """The lines under `heading` (a whole Markdown heading line) up to the next heading of the same or a higher
    level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i])), len(lines)
    )  # fmt: skip
    return "\n".join(lines[start + 1 : end])


def _cells(line: str) -> list[str]:
    """A table row's cells; a `|` inside backticks belongs to its cell."""
    cells, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    return [*cells, current.strip()]


def _table(section: str, first_column: str) -> list[dict[str, str]]:
    """The first table in `section` whose header starts with `first_column`, as one dict per row."""
    lines = section.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and _cells(line)[0] == first_column:
            header = _cells(line)
            assert set(lines[i + 1].replace("|", "").strip()) <= set("-: "), lines[i + 1]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = _cells(row)
                assert len(cells) == len(header), row
                rows.append(dict(zip(header, cells)))
            return rows
    raise AssertionError(f"no table starting with {first_column!r}")


def _literal(text: str):
    """A documented default as a value: a number, on/off/none/all, a `code` literal, or COMPUTED for words."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+", text):
        return float(text)
    words = {"on": True, "off": "off", "none": None, "all": None}
    if text in words:
        return words[text]
    if re.fullmatch(r"`[^`]*`", text) and not text.startswith("`--"):
        return text[1:-1]
    return COMPUTED


def _settings(flags_cell: str, fields: dict[str, dataclasses.Field]) -> list[str]:
    """The fields a row's flags name: `--x`, its `--no_x` twin and a `(--alias)` name one setting."""
    names = []
    for flag in re.findall(r"`--([a-z0-9_]+)`", flags_cell):
        aliases = {alias.lstrip("-"): f.name for f in fields.values() for alias in f.metadata.get("aliases", [])}
        name = aliases.get(flag, flag)
        if name.startswith("no_") and name[3:] in names:
            continue
        assert name in fields, f"docs/cli.md documents --{flag}, which is not a field"
        if name not in names:
            names.append(name)
    return names


def _check(field: dataclasses.Field, documented, text: str) -> None:
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    where = f"docs/cli.md: --{field.name} default {text!r}, code {default!r}"
    if documented is COMPUTED:
        assert default is None, where
    elif documented == "off":
        assert default in (False, None), where
    elif isinstance(default, list):
        assert split_list(documented) == default, where
    else:
        assert documented == default and type(documented) is type(default), where


def _check_table(rows: list[dict[str, str]], dataclass_type, special=()) -> set[str]:
    """Every row's default(s) against `dataclass_type`'s field defaults; returns the fields the table covers."""
    fields = {f.name: f for f in dataclasses.fields(dataclass_type)}
    covered = set()
    for row in rows:
        names = _settings(row["flag"], fields)
        assert names, row
        text = row["default"]
        parts = text.split(", ") if len(names) > 1 and len(text.split(", ")) == len(names) else [text] * len(names)
        for name, part in zip(names, parts):
            documented = special[part] if part in dict(special) else _literal(part)
            _check(fields[name], documented, part)
            covered.add(name)
    return covered


def test_the_cli_docs_evaluate_table_gives_every_evaluation_arguments_default():
    docs = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = _table(_section(docs, "## `msd-trl evaluate`"), "flag")
    covered = _check_table(rows, EvaluationArguments)
    assert covered == {f.name for f in dataclasses.fields(EvaluationArguments)}


def test_the_cli_docs_train_tables_give_the_data_arguments_and_parser_defaults():
    docs = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = _section(docs, "## `msd-trl train`")
    # The off-policy cache's default is a path inside the output folder, computed at run time.
    special = {f"`OUTPUT_DIR/{TEACHER_COMPLETIONS_FILE}`": COMPUTED}
    covered = _check_table(_table(section, "flag"), DataArguments, special)
    assert covered == {f.name for f in dataclasses.fields(DataArguments)}

    # "Defaults the CLI sets (overridable): `--output_dir outputs/msd`, `--use_peft` with `--lora_r 16 ...`, ...":
    # each value is what the train parser starts from.
    paragraph = next(p for p in section.split("\n\n") if p.startswith("Defaults the CLI sets"))
    parser = build_train_parser()
    pairs = []
    sentence = re.split(r"\.\s", paragraph.replace("\n", " "))[0]  # the next one names --model_name_or_path's
    for code in re.findall(r"`(--[^`]+)`", sentence):
        tokens = code.split()
        for i, token in enumerate(tokens):
            if token.startswith("--"):
                value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else "true"
                pairs.append((token[2:], value))
    assert len(pairs) >= 12, pairs
    for name, value in pairs:
        default = parser.get_default(name)
        default = getattr(default, "value", default)  # an enum (save_strategy)
        if value == "true":
            assert default is True, f"--{name}: docs on, parser {default!r}"
        elif re.fullmatch(r"[-\d.e]+", value):
            assert float(value) == default, f"--{name}: docs {value!r}, parser {default!r}"
        else:
            assert value == default, f"--{name}: docs {value!r}, parser {default!r}"


# ------------------------------------------------------------------------------------------------ the changelog

# evaluate()'s defaults before issue 25, read from `git show 897d659^1:msd_trl/evaluation/runner.py`.
EVALUATE_BEFORE = {"max_new_tokens": 64, "max_chars": None, "teacher_prompt_template": "{teacher_prompt}"}


def _changelog_section() -> str:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    heading = next(line for line in text.splitlines() if line.startswith("### Changed in this version: `evaluate()`"))
    return _section(text, heading)


def _python(cell: str):
    """The value a changelog cell gives in code font: "`None` (no character cap)" -> None."""
    return ast.literal_eval(re.match(r"`([^`]*)`", cell).group(1))


def _keywords(source: str) -> dict:
    """`a=1, b="x"` (a call's keyword arguments, as the changelog writes them) -> {"a": 1, "b": "x"}."""
    call = ast.parse(f"f({source})", mode="eval").body
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}


def test_the_changelog_gives_evaluates_old_and_new_defaults_and_how_to_keep_the_old():
    from msd_trl.presets import DEFAULT_TEACHER_PRESET, SAFETY_SYSTEM_PROMPT, TeacherContext

    rows = {row["setting of `evaluate()`"]: row for row in _table(_changelog_section(), "setting of `evaluate()`")}
    defaults = EvaluationArguments()
    for name in ("max_new_tokens", "max_chars"):
        row = rows[f"`{name}`"]
        before, now = _python(row["before"]), _python(row["now"])
        assert before == EVALUATE_BEFORE[name] and now == getattr(defaults, name), row
        assert (
            getattr(EvaluationArguments(**_keywords(row["to get the old behaviour, pass"].strip("`"))), name) == before
        )
    # The teacher context: before, the English query under the safety system prompt; now the default preset's.
    row = rows["teacher context"]
    assert f"`{DEFAULT_TEACHER_PRESET}`" in row["now"] and defaults.teacher_preset == DEFAULT_TEACHER_PRESET
    old = EvaluationArguments(**_keywords(row["to get the old behaviour, pass"].strip("`"))).teacher_context
    assert old == TeacherContext(EVALUATE_BEFORE["teacher_prompt_template"], SAFETY_SYSTEM_PROMPT)
    # teacher_system_prompt=None: before, no system prompt; now the preset's; "" is none.
    row = rows["`teacher_system_prompt=None`"]
    assert EvaluationArguments(teacher_system_prompt=None).teacher_context.system_prompt is not None
    keep = _keywords(row["to get the old behaviour, pass"].strip("`"))
    assert EvaluationArguments(teacher_preset="english_refusal", **keep).teacher_context == TeacherContext(
        EVALUATE_BEFORE["teacher_prompt_template"], None
    )


@pytest.mark.skipif(not (SHARED_DATA / "multijail").exists(), reason="needs ../shared/data")
def test_the_changelogs_old_defaults_call_answers_as_evaluate_did_before(tiny_tokenizer):
    """The changelog's one call with the old defaults, run: 64-token answers without a character cap, the teacher
    on the English query under the safety system prompt, as `evaluate()` answered before issue 25."""
    from conftest import make_model

    from msd_trl.data import load_multijail
    from msd_trl.evaluation import evaluate
    from msd_trl.presets import SAFETY_SYSTEM_PROMPT

    code = re.search(r"```python\n(.*?)```", _changelog_section(), re.S).group(1)
    call = next(
        node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call) and node.func.id == "evaluate"
    )
    restore = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg not in ("harmful", "benign")}
    assert restore == {"teacher_preset": "english_refusal", "max_new_tokens": 64, "max_chars": None}
    harmful = load_multijail(SHARED_DATA / "multijail", ["jv"])
    model = make_model(tiny_tokenizer)
    common = dict(harmful=harmful, languages=["jv"], limit=1, progress=False, answer_language=False)
    old, old_records = evaluate(model, tiny_tokenizer, **common, **restore)
    assert {k: old["settings"][k] for k in EVALUATE_BEFORE} == EVALUATE_BEFORE
    assert old["settings"]["budgets"]["harmful/jv"] >= 64  # the English budget, scaled up for Javanese
    teacher = [r for r in old_records if r["kind"] == "teacher"]
    assert teacher and all(r["system_prompt"] == SAFETY_SYSTEM_PROMPT for r in teacher)
    assert [r["prompt"] for r in teacher] == harmful.select([0])["teacher_prompt"]
    new, _ = evaluate(model, tiny_tokenizer, **common)
    defaults = EvaluationArguments()
    assert (new["settings"]["max_new_tokens"], new["settings"]["max_chars"]) == (defaults.max_new_tokens, 120)
    assert new["settings"]["teacher_prompt_template"] == defaults.teacher_context.template
