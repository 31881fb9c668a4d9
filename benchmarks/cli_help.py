"""Command-line speed: wall time of ``python -m cvexp.<job> --help`` for every entry point.

Each run is a fresh process, as a user's is. Both ways of listing the config groups run side by
side, alternating, so that a busy spell on the machine hits both alike: cvexp's (one config
repository per help call, cvexp/cli_help.py) and Hydra's own (a repository per group lookup,
``CVEXP_FAST_HELP=0``). The two help texts must be identical. Goal: at most 1 s (median) each.
Writes its table into docs/benchmarks.md (section ``cli-help``) with ``--write``.

    python benchmarks/cli_help.py [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.report import BENCHMARKS_DOC, publish, runs_cell  # noqa: E402
from cvexp.cli_help import FAST_HELP_ENV  # noqa: E402
from cvexp.paths import CONFIG_DIR  # noqa: E402

GOAL_SECONDS = 1.0
# Each primary config in conf/ is an entry point: conf/train.yaml is `python -m cvexp.train`.
ENTRY_POINTS = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
WAYS = {"cvexp": "1", "hydra": "0"}  # the value of CVEXP_FAST_HELP


def timed_help(job: str, fast: str) -> tuple[float, str]:
    """Seconds from starting ``python -m cvexp.<job> --help`` to its exit, and what it printed."""
    env = {**os.environ, FAST_HELP_ENV: fast}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"cvexp.{job}", "--help"], capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cvexp.{job} --help failed ({FAST_HELP_ENV}={fast}):\n{result.stderr}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    times: dict[tuple[str, str], list[float]] = {(job, way): [] for job in ENTRY_POINTS for way in WAYS}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for job in ENTRY_POINTS:
            texts = {}
            for way, fast in WAYS.items():
                seconds, texts[way] = timed_help(job, fast)
                times[job, way].append(seconds)
            if texts["cvexp"] != texts["hydra"]:
                raise SystemExit(f"cvexp.{job} --help prints another text than Hydra's own way")
            print(f"repeat {repeat + 1} {job}: cvexp {times[job, 'cvexp'][-1]:.2f} s, hydra {times[job, 'hydra'][-1]:.2f} s", flush=True)
    load_after = os.getloadavg()[0]

    lines = [
        f"`python -m cvexp.<job> --help`, a fresh process each, {args.repeats} alternating repeats; the texts are identical both ways. "
        f"Load average (1 min) {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores.",
        "",
        "| entry point | cvexp, s (median) | runs | Hydra's own (`CVEXP_FAST_HELP=0`), s (median) | runs | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for job in ENTRY_POINTS:
        fast, slow = statistics.median(times[job, "cvexp"]), statistics.median(times[job, "hydra"])
        mark = "" if fast <= GOAL_SECONDS else " (over the goal)"
        lines.append(f"| `cvexp.{job}` | {fast:.2f}{mark} | {runs_cell(times[job, 'cvexp'], 2)} | {slow:.2f} | "
                     f"{runs_cell(times[job, 'hydra'], 2)} | {slow / fast:.1f}× |")  # fmt: skip
    lines.append(f"\nGoal: at most {GOAL_SECONDS:.0f} s (median) for every entry point.")
    publish("\n".join(lines), "cli-help", write=args.write)
    if args.write:
        print(f"written to {BENCHMARKS_DOC}")


if __name__ == "__main__":
    main()
