"""Find copied code: runs of >= N identical lines (whitespace-stripped, blank and comment lines skipped) that occur
in two places of the given folders. Exit 1 and list them when any exist.

    python scripts/find_copies.py msd_trl examples --lines 10
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path


def find_copies(roots: list[str], lines: int = 10) -> list[list[tuple[str, int]]]:
    """Each copied run once: the places (file, first line number) where the same `lines` lines occur."""
    index: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path in sorted(p for root in roots for p in Path(root).rglob("*.py")):
        kept = [(number, text.strip()) for number, text in enumerate(path.read_text().splitlines(), 1)]
        kept = [(n, t) for n, t in kept if t and not t.startswith("#")]
        for start in range(len(kept) - lines + 1):
            window = tuple(t for _, t in kept[start : start + lines])
            if sum(len(t) > 3 for t in window) >= 0.7 * lines:  # not a run of brackets and `pass`
                index[window].append((str(path), kept[start][0]))
    seen, copies = set(), []
    for places in index.values():
        key = tuple(places)
        if len(places) > 1 and key not in seen:
            seen.add(key)
            copies.append(places)
    return copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--lines", type=int, default=10)
    args = parser.parse_args(argv)
    copies = find_copies(args.roots, args.lines)
    for places in copies:
        print(" = ".join(f"{file}:{line}" for file, line in places))
    print(f"{len(copies)} copied run(s) of >= {args.lines} lines", file=sys.stderr)
    return 1 if copies else 0


if __name__ == "__main__":
    raise SystemExit(main())
