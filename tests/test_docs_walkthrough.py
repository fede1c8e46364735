"""docs/own_data.md, run as written: its data files are written from the page and every `msd-trl` command of its
bash blocks is run (on a tiny Llama, two steps, short answers), so the walk-through and the code cannot drift apart.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from msd_trl.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own_data.md"
FILE_BLOCK = re.compile(r"<!-- file: (?P<name>[\w.]+) -->\n```\w*\n(?P<body>.*?)```", re.S)
BASH_BLOCK = re.compile(r"```bash\n(?P<body>.*?)```", re.S)


def _commands(text: str) -> list[list[str]]:
    commands = []
    for block in BASH_BLOCK.finditer(text):
        joined = block["body"].replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("msd-trl "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_own_data_walkthrough_runs_as_written(tiny_model_dir, tmp_path, monkeypatch, capsys):
    text = PAGE.read_text(encoding="utf-8")
    files = {m["name"]: m["body"] for m in FILE_BLOCK.finditer(text)}
    assert set(files) == {"mine_tl.jsonl", "red_team.csv"}
    monkeypatch.chdir(tmp_path)
    for name, body in files.items():
        Path(name).write_text(body, encoding="utf-8")
    commands = _commands(text)
    assert [c[0] for c in commands] == ["train", "train", "evaluate"]
    tiny = {
        "train": ["--model_name_or_path", str(tiny_model_dir), "--max_steps", "2", "--max_new_tokens", "4",
                  "--per_device_train_batch_size", "2", "--max_prompt_tokens", "1024", "--max_prompt_length", "1024",
                  "--eval_limit", "3"],
        "evaluate": ["--model", str(tiny_model_dir), "--max_new_tokens", "2", "--max_budget_tokens", "4"],
    }  # fmt: skip
    for command in commands:
        assert main([*command, *tiny[command[0]]]) == 0, command
    printed = capsys.readouterr().out
    assert "mine_tl/tl: 10 read -> 5 held out" in printed and "msd-trl plan:" in printed
    card = Path("outputs/tl/README.md").read_text(encoding="utf-8")
    assert "your file `mine_tl.jsonl`" in card and "MultiJail" not in card and "| refusal, harmful | tl |" in card
    wide_card = Path("outputs/wide/README.md").read_text(encoding="utf-8")
    assert "your file `red_team.csv`" in wide_card and "| refusal, harmful | jv |" in wide_card
    report = json.loads(Path("outputs/wide-eval/report.json").read_text())
    assert set(report["languages"]) == {"jv", "sw"} and set(report["benign_sets"]) == {"benign"}
