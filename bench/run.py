"""Run every benchmark figure, print one table, write bench/results.json.

``python -m bench.run [--quick] [--only 1,3] [--out bench/results.json]``

Each figure runs in its own Python process (``python -m bench.<module> --json ...``), so
one figure's memory, event loop and metrics never colour another's, and peak-RSS figures
start clean. Figures are independent; one that fails is reported and the rest still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, format_table, machine

# Figure 1 runs last: it writes gigabytes, and the write-back that follows would disturb
# whatever ran after it. The table is printed in figure order.
FIGURES = (
    ("2", "bench.calls"),
    ("3", "bench.detection"),
    ("4", "bench.wide_pass"),
    ("5", "bench.throughput"),
    ("6", "bench.forged"),
    ("1", "bench.pass_cost"),
)


def run_figure(module: str, quick: bool, out: Path) -> tuple[dict[str, Any] | None, float, str]:
    args = [sys.executable, "-m", module, "--json", str(out)]
    if quick:
        args.append("--quick")
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or not out.exists():
        return None, elapsed, f"exit status {proc.returncode}"
    return json.loads(out.read_text()), elapsed, ""


def revision() -> str:
    """The commit measured, with "+changes" when bindu/ has uncommitted edits."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bindu"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--only", help="comma-separated figure numbers, e.g. 1,3")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else {n for n, _ in FIGURES}
    started = time.perf_counter()
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB,"
        f" Python {info['python']}, SQLite {info['sqlite']}, Postgres {info['postgres']}",
        flush=True,
    )
    figures: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bindu-bench-") as tmp:
        for number, module in FIGURES:
            if number not in wanted:
                continue
            print(f"\n-- figure {number} ({module})", flush=True)
            result, elapsed, error = run_figure(module, args.quick, Path(tmp) / f"{number}.json")
            if result is None:
                errors[number] = error
                print(f"   figure {number} FAILED: {error}", flush=True)
                continue
            result["wall_seconds"] = round(elapsed, 1)
            figures.append(result)
    wall = time.perf_counter() - started
    figures.sort(key=lambda figure: figure["figure"])
    rows = [row for figure in figures for row in figure["rows"]]
    print("\n" + format_table(rows))
    print(f"\n{len(figures)} figure(s) in {wall:.0f} s" + (f"; failed: {errors}" if errors else ""))
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}"
    document = {
        "command": command,
        "quick": args.quick,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1),
        "machine": info,
        "revision": revision(),
        "figures": figures,
        "errors": errors,
    }
    Path(args.out).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"results written to {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
