"""The package's layout rules (docs/code_layout.md): no copied run of 10 lines, and the checker finds one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("find_copies", ROOT / "scripts" / "find_copies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_copied_run_of_ten_lines_in_the_package_or_examples():
    assert _checker().find_copies([str(ROOT / "msd_trl"), str(ROOT / "examples")], lines=10) == []


def test_the_checker_finds_a_copy(tmp_path):
    body = "\n".join(f"value_{i} = compute({i}, 'x')" for i in range(12))
    (tmp_path / "a.py").write_text(body)
    (tmp_path / "b.py").write_text("import os\n" + body)
    copies = _checker().find_copies([str(tmp_path)], lines=10)
    assert copies and {Path(f).name for f, _ in copies[0]} == {"a.py", "b.py"}
