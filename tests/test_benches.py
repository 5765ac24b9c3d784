"""The benchmarks under bench/ still start: each imports vmlab as it is and answers --help
(they boot VMs and take minutes, so the suite runs none of them; a rename in vmlab/ that
left one behind was found only when someone ran it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_a_benchmark_starts_and_says_how_it_is_run(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stdout + done.stderr
