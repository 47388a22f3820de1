"""`make mutate`: mutmut over the money-critical modules, against the fast tests only.

``python -m bench.mutation [--max-children N] [--min-score 90]``

What is mutated and which tests run live in pyproject's ``[tool.mutmut]``. Every run starts
from a fresh copy (``mutants/`` removed first), so the score never leans on a cached
result from older code. Prints the score, the run time and every mutant that was not
killed (those must be listed in docs/mutation.md with a reason); exits 1 below the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO

MUTMUT = Path(sys.executable).with_name("mutmut")
MUTANTS = REPO / "mutants"


def mutmut(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(
        [str(MUTMUT), *args], cwd=REPO, check=True, text=True, capture_output=capture
    )
    return proc.stdout if capture else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min-score", type=float, default=90.0)
    args = parser.parse_args()

    shutil.rmtree(MUTANTS, ignore_errors=True)
    started = time.perf_counter()
    mutmut("run", "--max-children", str(args.max_children))
    elapsed = time.perf_counter() - started
    mutmut("export-cicd-stats", capture=True)
    stats = json.loads((MUTANTS / "mutmut-cicd-stats.json").read_text())
    not_killed = [
        line.strip() for line in mutmut("results", capture=True).splitlines() if line.strip()
    ]

    # A mutant whose tests hang until mutmut's timeout was noticed: counted as killed.
    killed = stats["killed"] + stats["timeout"]
    judged = stats["total"] - stats["skipped"]
    score = 100.0 * killed / judged if judged else 0.0
    print()
    print(f"mutants: {stats['total']}  killed: {stats['killed']}  timeout: {stats['timeout']}")
    print(f"survived: {stats['survived']}  no tests: {stats['no_tests']}", end="")
    print(f"  suspicious: {stats['suspicious']}  skipped: {stats['skipped']}")
    print(f"score: {score:.1f} % killed ({killed}/{judged}) in {elapsed / 60:.1f} min")
    for line in not_killed:
        print(f"  {line}")
    if score < args.min_score:
        print(f"below {args.min_score:g} %: kill the survivors or explain them in docs/mutation.md")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
