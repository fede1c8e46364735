"""The defaults the docs state are the code's: the tables of docs/cli.md (evaluate's `EvaluationArguments`, train's
`DataArguments` and the defaults the train parser sets).

Tables are read as a user reads them: a row names one or more flags (a `--no_x` twin and a `(--alias)` name the same
setting) and gives one default, or one per flag separated by ", ". A default is a literal (`8`, `0.2`, `` `test` ``,
`` `sw,bn,th` ``, on / off / none / all) or words that describe a value computed at run time ("the preset's",
"embedded SmolLM2"), which the code must then hold as `None`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from msd_trl.arguments import TEACHER_COMPLETIONS_FILE, DataArguments, build_train_parser
from msd_trl.evaluation import EvaluationArguments
from msd_trl.names import split_list

ROOT = Path(__file__).resolve().parents[1]
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
