"""Benchmark: vmlab's download + decompress + verify against `curl | bunzip2 && md5sum`.

    python bench/bench_fetch.py [--size-mb 200] [--runs 3]

Generates a bz2 file of about --size-mb MB once (cached in /tmp/vmlab-bench/, from data
that compresses poorly, as an ISO's does), serves it on 127.0.0.1 with Python's
threaded http.server in its own process (the same server for both contenders), then
times, alternating, (a) the shell pipeline and (b) vmlab.images.fetch.fetch into a fresh cache
(in its own interpreter, as the command line would run it). Prints every run, both
medians and the ratio vmlab / baseline; the goal is a ratio of at most 1.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path("/tmp/vmlab-bench")
NAME = "bench.iso.bz2"
OUT = "bench.iso"
BLOCK = 1 << 20


def iso_like(rnd: random.Random, text: bytes, n_blocks: int) -> bytes:
    """Half random bytes (packages, compressed payloads), half text-like bytes (configs, docs)."""
    parts = []
    for _ in range(n_blocks):
        parts.append(rnd.randbytes(BLOCK // 2))
        at = rnd.randrange(len(text) - BLOCK // 2)
        parts.append(text[at:at + BLOCK // 2])
    return b"".join(parts)


def generate(size_mb: int) -> Tuple[Path, Dict[str, str]]:
    """The mirror folder holding a ~size_mb MB .bz2 and its md5.txt; built once, then reused."""
    folder = ROOT / f"{size_mb}mb"
    done = folder / "sums.txt"
    if done.is_file():
        sums = dict(line.split(" ", 1) for line in done.read_text().splitlines())
        return folder, sums
    shutil.rmtree(folder, ignore_errors=True)
    work = folder / "work"
    work.mkdir(parents=True)
    rnd = random.Random(42)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz_/.=", k=rnd.randint(2, 12))) for _ in range(20000)]
    text = b" ".join(rnd.choices(words, k=(8 << 20) // 7))
    sample = iso_like(rnd, text, 8)
    ratio = len(sample) / len(bz2.compress(sample, 9))
    n_blocks = max(1, int(size_mb * 1e6 * ratio / BLOCK))
    pieces = os.cpu_count() or 2
    per = -(-n_blocks // pieces)
    print(f"generating ~{size_mb} MB of bz2 ({n_blocks} MiB of data, ratio ~{ratio:.2f}) "
          f"with {pieces} bzip2 processes, once...", flush=True)
    md5_iso, sha_iso = hashlib.md5(), hashlib.sha256()
    inputs = []
    for i in range(pieces):
        blocks = min(per, n_blocks - i * per)
        if blocks <= 0:
            break
        data = iso_like(rnd, text, blocks)
        md5_iso.update(data)
        sha_iso.update(data)
        p = work / f"{i:03d}"
        p.write_bytes(data)
        inputs.append(p)

    def compress(p: Path) -> None:
        subprocess.run(["bzip2", "-9", "-f", str(p)], check=True)

    with ThreadPoolExecutor(len(inputs)) as pool:
        list(pool.map(compress, inputs))
    (folder / "iso-images").mkdir()
    target = folder / "iso-images" / NAME
    md5_bz2 = hashlib.md5()
    with open(target, "wb") as out:  # concatenated streams, as pbzip2 writes them
        for p in inputs:
            data = Path(f"{p}.bz2").read_bytes()
            md5_bz2.update(data)
            out.write(data)
    shutil.rmtree(work)
    sums = {"md5_bz2": md5_bz2.hexdigest(), "md5_iso": md5_iso.hexdigest(), "sha256_iso": sha_iso.hexdigest()}
    (folder / "iso-images" / "md5.txt").write_text(f"MD5 ({NAME}) = {sums['md5_bz2']}\n"
                                                   f"MD5 ({OUT}) = {sums['md5_iso']}\n")
    done.write_text("".join(f"{k} {v}\n" for k, v in sums.items()))
    return folder, sums


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path) -> Tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/iso-images/md5.txt", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the benchmark's HTTP server did not start")


def timed(argv: List[str]) -> Tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user + system, the command and all it started) and the result."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu, proc


def run_baseline(url: str, scratch: Path, sums: Dict[str, str]) -> Tuple[float, float]:
    out = scratch / OUT
    cmd = f"set -o pipefail; curl -s {url}/iso-images/{NAME} | bunzip2 > {out} && md5sum {out}"
    elapsed, cpu, proc = timed(["bash", "-c", cmd])
    if proc.returncode != 0 or not proc.stdout.startswith(sums["md5_iso"]):
        raise SystemExit(f"baseline failed: {proc.stdout} {proc.stderr}")
    out.unlink()
    return elapsed, cpu


def run_vmlab(url: str, scratch: Path, sums: Dict[str, str]) -> Tuple[float, float]:
    cache = scratch / "cache"
    code = ("import sys; from pathlib import Path; from vmlab.images.fetch import fetch; "
            f"r = fetch(mirrors=[{url!r}], path='iso-images/{NAME}', cache_dir=Path({str(cache)!r}), progress=False); "
            "print(r.sha256)")
    elapsed, cpu, proc = timed([sys.executable, "-c", code])
    if proc.returncode != 0 or proc.stdout.strip() != sums["sha256_iso"]:
        raise SystemExit(f"vmlab failed: {proc.stdout} {proc.stderr}")
    shutil.rmtree(cache)
    return elapsed, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200, help="size of the .bz2 file (default 200)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each contender, alternating (default 3)")
    args = ap.parse_args()
    for tool in ("curl", "bunzip2", "md5sum", "bzip2"):
        if not shutil.which(tool):
            raise SystemExit(f"the benchmark needs {tool} (apt-get install -y curl bzip2)")
    folder, sums = generate(args.size_mb)
    bz2_file = folder / "iso-images" / NAME
    server, url = serve(folder)
    times: Dict[str, List[float]] = {"baseline": [], "vmlab": []}
    cpus: Dict[str, List[float]] = {"baseline": [], "vmlab": []}
    try:
        with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
            scratch = Path(tmp)
            print(f"host: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"file {bz2_file.stat().st_size / 1e6:.1f} MB bz2, served by http.server at {url}")
            print("(a) baseline: curl -s URL | bunzip2 > file && md5sum file")
            print("(b) vmlab:    vmlab.images.fetch.fetch (download, resumable partial, decompress, md5 + sha256, "
                  "cache), progress off")
            for i in range(args.runs):
                for who, run in (("baseline", run_baseline), ("vmlab", run_vmlab)):
                    t, cpu = run(url, scratch, sums)
                    times[who].append(t)
                    cpus[who].append(cpu)
                    print(f"  run {i + 1}  {who:8s} {t:7.2f} s wall  {cpu:6.2f} s CPU", flush=True)
    finally:
        server.terminate()
        server.wait()
    base, ours = statistics.median(times["baseline"]), statistics.median(times["vmlab"])
    size = bz2_file.stat().st_size / 1e6
    print(f"median baseline (curl | bunzip2 && md5sum): {base:7.2f} s  ({size / base:5.1f} MB/s of bz2), "
          f"{statistics.median(cpus['baseline']):.2f} s CPU")
    print(f"median vmlab fetch:                         {ours:7.2f} s  ({size / ours:5.1f} MB/s of bz2), "
          f"{statistics.median(cpus['vmlab']):.2f} s CPU")
    print(f"ratio vmlab / baseline:                     {ours / base:7.3f}  "
          f"({'vmlab is no slower' if ours <= base else 'vmlab is slower'})")


if __name__ == "__main__":
    main()
