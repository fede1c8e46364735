"""msd_trl.checkpoint_choice and `msd-trl select-checkpoint`: the monitor-selected checkpoint, on the measured
learning curve and on run folders laid out as the Trainer writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msd_trl.checkpoint_choice import choose_checkpoint, format_choice, monitor_points
from msd_trl.cli import main

CURVES = Path(__file__).resolve().parents[1] / "docs" / "results" / "learning_curves.json"
PREFIX = "eval_selectivity"


def _points_of(curve_entries) -> dict[int, dict[str, float]]:
    """{step: monitor metrics} as SelectivityCallback logs them, from learning_curves.json entries."""
    return {
        entry["step"]: {
            f"{PREFIX}/{code}/{side}": values[side]
            for code, values in entry["languages"].items()
            for side in ("harmful_greedy", "benign_greedy")
        }
        for entry in curve_entries
    }


def _seed0_curve() -> dict[int, dict[str, float]]:
    curves = json.loads(CURVES.read_text())["curves"]
    return _points_of([c for c in curves if c["cell"] == "on_dpsw_english" and c["seed"] == 0])


def test_the_rule_keeps_step_400_of_the_measured_480_step_curve():
    """docs/results.md: on seed 0's curve the monitor alone keeps step 400, the most selective checkpoint greedy
    evaluation found; Arabic refuses every benign prompt there and is named."""
    points = _seed0_curve()
    assert sorted(points) == [80, 160, 240, 320, 400, 480]
    every = choose_checkpoint(points)
    assert every.step == 400 and every.languages == ["ar", "bn", "jv", "ko", "sw", "th", "vi"]
    # Step 160 refuses harmful prompts (0.60) but benign ones nearly as often (gap 0.17): not eligible.
    # Step 480 refuses 0.56 of the benign prompts on the mean over seven languages (Arabic 1.0): not eligible either.
    assert [row["step"] for row in every.rows if row["eligible"]] == [400]
    assert every.watch == {"ar": 1.0}
    trained = choose_checkpoint(points, ["jv", "sw", "bn"])
    assert trained.step == 400 and trained.watch == {}
    chosen = next(row for row in trained.rows if row["step"] == 400)
    assert chosen["benign_greedy"] == pytest.approx((0.10 + 0.05 + 0.10) / 3)
    assert "step 400" in trained.reason and "3 checkpoint(s)" in trained.reason
    text = format_choice(trained)
    assert "<- chosen" in text and text.count("\n") == len(trained.rows) + 3


def test_no_eligible_checkpoint_says_which_came_closest():
    choice = choose_checkpoint(_seed0_curve(), ["jv", "sw", "bn"], min_harmful_greedy=0.9)
    assert choice.step is None
    assert "highest harmful_greedy: 0.80 at step 480, gap 0.37" in choice.reason
    assert "largest gap: 0.50 at step 400" in choice.reason


def test_a_checkpoint_that_refuses_everything_is_not_eligible():
    """Seed 1 of the one-context cell at step 80 (measured, docs/results.md): greedy refuses 0.85-1.0 of harmful and
    0.60-1.0 of benign prompts; it is the only checkpoint whose harmful_greedy reached 0.5, and it is not kept."""
    refuse_all = {
        f"{PREFIX}/{code}/{side}": value
        for code, h, b in (("jv", 0.95, 0.80), ("sw", 1.0, 0.95), ("bn", 0.95, 1.0))
        for side, value in (("harmful_greedy", h), ("benign_greedy", b))
    }
    selective_but_low = {f"{PREFIX}/{code}/{side}": value for code in ("jv", "sw", "bn")
                         for side, value in (("harmful_greedy", 0.3), ("benign_greedy", 0.0))}  # fmt: skip
    choice = choose_checkpoint({80: refuse_all, 160: selective_but_low})
    assert choice.step is None and "highest harmful_greedy: 0.97 at step 80, gap 0.05" in choice.reason
    # Without the gap condition it is still not kept: it refuses most benign prompts (mean 0.92 > 0.5).
    assert choose_checkpoint({80: refuse_all, 160: selective_but_low}, min_greedy_gap=0.0).step is None
    loose = {"min_greedy_gap": 0.0, "max_benign_greedy": 1.0}
    assert choose_checkpoint({80: refuse_all, 160: selective_but_low}, **loose).step == 80


def test_seed_2_has_no_checkpoint_to_keep():
    """docs/results.md: seed 2 of the one-context cell never refuses the monitor's harmful prompts greedily
    (mean harmful_greedy >= 0.5) without refusing most benign ones; its step 480 (harmful 0.88, benign 0.68, gap 0.20)
    passed the gap condition and is what the rule kept before `max_benign_greedy`. Now none is kept, and the reason
    points at step 320, the checkpoint greedy evaluation found most selective (refusal .45 / .25 / .70 against
    over-refusal .00 / .05 / .00)."""
    curves = json.loads(CURVES.read_text())["curves"]
    points = _points_of([c for c in curves if c["cell"] == "on_dpsw_english" and c["seed"] == 2])
    assert sorted(points) == [80, 160, 240, 320, 400, 480]
    choice = choose_checkpoint(points, ["jv", "sw", "bn"])
    assert choice.step is None and not any(row["eligible"] for row in choice.rows)
    assert "highest harmful_greedy: 0.88 at step 480, gap 0.20, benign_greedy 0.68" in choice.reason
    assert "largest gap: 0.38 at step 320" in choice.reason
    assert choose_checkpoint(points, ["jv", "sw", "bn"], max_benign_greedy=1.0).step == 480
    assert choose_checkpoint(points, ["jv", "sw", "bn"], min_harmful_greedy=0.4).step == 320


def test_ties_go_to_the_larger_gap_then_the_earlier_step():
    def point(h, b):
        return {f"{PREFIX}/jv/harmful_greedy": h, f"{PREFIX}/jv/benign_greedy": b}

    assert choose_checkpoint({10: point(0.6, 0.1), 20: point(0.9, 0.1), 30: point(0.9, 0.1)}).step == 20
    # A step missing a chosen language's values is not eligible, whatever its other values.
    points = {10: point(0.6, 0.2), 20: {f"{PREFIX}/jv/harmful_greedy": 1.0}}
    assert choose_checkpoint(points).step == 10


def test_errors_name_the_problem():
    points = _seed0_curve()
    with pytest.raises(ValueError, match=r"\['xx'\] were not monitored"):
        choose_checkpoint(points, ["jv", "xx"])
    with pytest.raises(ValueError, match="min_harmful_greedy must be within"):
        choose_checkpoint(points, min_harmful_greedy=1.5)
    with pytest.raises(ValueError, match="min_greedy_gap must be within"):
        choose_checkpoint(points, min_greedy_gap=2)
    with pytest.raises(ValueError, match="max_benign_greedy must be within"):
        choose_checkpoint(points, max_benign_greedy=-0.1)
    with pytest.raises(ValueError, match="older than the greedy-opening rates"):
        choose_checkpoint({80: {f"{PREFIX}/jv/auc": 0.7}})


def _write_run(root: Path, points: dict[int, dict[str, float]], keep: list[int]) -> Path:
    """A run folder as the Trainer leaves it: checkpoint-N/trainer_state.json with the log history up to N (loss
    entries too), for the steps in `keep` (the others deleted, as save_total_limit does)."""
    history = []
    for step in sorted(points):
        history.append({"step": step, "loss": 1.0, "epoch": step / 80})
        history.append({"step": step, **points[step], f"{PREFIX}/seconds": 1.5})
        if step in keep:
            folder = root / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return root


def test_cli_chooses_from_the_run_folder(tmp_path, capsys):
    run = _write_run(tmp_path / "run", _seed0_curve(), keep=[80, 160, 240, 320, 400, 480])
    (run / "checkpoint-560").mkdir()  # a save cut short: no trainer_state.json, not a checkpoint
    (run / "checkpoint-640").mkdir()  # cut short while writing it: unreadable, not a checkpoint either
    (run / "checkpoint-640" / "trainer_state.json").write_text('{"log_history": [{"step": 640, ')
    points, folders = monitor_points(run)
    assert sorted(points) == [80, 160, 240, 320, 400, 480] and folders[400] == run / "checkpoint-400"
    assert main(["select-checkpoint", str(run), "--languages", "jv,sw,bn", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert f"keep {run / 'checkpoint-400'}: step 400" in out
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["step"] == 400 and written["path"] == str(run / "checkpoint-400")
    assert [row["step"] for row in written["rows"]] == [80, 160, 240, 320, 400, 480]


def test_cli_never_keeps_a_deleted_checkpoint_and_fails_when_none_qualifies(tmp_path, capsys):
    run = _write_run(tmp_path / "run", _seed0_curve(), keep=[80, 240, 320, 480])  # 400 deleted by save_total_limit
    assert main(["select-checkpoint", str(run), "--languages", "jv,sw,bn"]) == 0
    assert f"keep {run / 'checkpoint-480'}" in capsys.readouterr().out  # the only eligible one left
    assert main(["select-checkpoint", str(run), "--min_harmful_greedy", "0.95"]) == 2
    captured = capsys.readouterr()
    assert "eligible" in captured.out and "no checkpoint has mean harmful_greedy >= 0.95" in captured.err


def test_cli_errors_on_a_run_without_monitor_values(tmp_path, capsys):
    assert main(["select-checkpoint", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    run = tmp_path / "plain"
    (run / "checkpoint-10").mkdir(parents=True)
    (run / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 10, "loss": 1}]}))
    assert main(["select-checkpoint", str(run)]) == 2
    assert "--selectivity_monitor" in capsys.readouterr().err


def test_choosing_imports_no_torch():
    """`msd-trl select-checkpoint` reads JSON files; it must not pay for importing torch."""
    import subprocess
    import sys

    code = "import sys, msd_trl.checkpoint_choice; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
