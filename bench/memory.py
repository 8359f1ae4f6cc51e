"""Memory of N worker processes holding a data set: each its own copy, or one mapped store.

    .venv/bin/python bench/memory.py studies/imagenette.yaml --workers 1 4
    .venv/bin/python bench/memory.py SPEC --set dataset.image_size=128 --workers 1 4 --json

For each store (``memory``: every process decodes nothing but reads the decoded cache into its
own memory, kdsearch's path before the mapped store; ``mmap``: every process maps one file) and
each N, N processes load the spec's splits as a worker does (``Context.load`` without the
teacher), read every training, validation and test pixel once (an epoch touches them all), and
wait. The figure is the sum of their proportional set sizes (PSS, ``/proc/PID/smaps_rollup``):
a page shared by k processes counts 1/k to each, so the sum is what the machine really holds.
It is split into the mapped store's share (the same whatever the number of workers) and each
process's own memory (the runtime, its heap and, in memory, its copy of the images).
The decoded cache is built before the first measurement, so decoding is not measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HOLD = """
import json, sys, time, torch
from kdsearch.config import spec as specs
from kdsearch.training.experiment import Context
spec = specs.load(sys.argv[1]).with_overrides(json.loads(sys.argv[2]))
ctx = Context.load(spec, "cpu", with_teacher=False)
total = 0
for images in (ctx.data.train, ctx.data.val, ctx.data.test):
    for first in range(0, len(images), 64):
        total += int(images.chunk(first, first + 64).sum(dtype=torch.int64))
print("ready", total, flush=True)
time.sleep(3600)
"""


def pss_kib(pid: int) -> int:
    """Proportional set size of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss line for process {pid}")


def mapped_cache_kib(pid: int) -> int:
    """PSS in KiB of the process's mappings of kdsearch's cache files (the mapped store).

    The rest of a process's PSS is its own: the Python and torch runtime, the allocator's
    heap, and, with the in-memory store, its private copy of the images.
    """
    total, in_cache = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            in_cache = len(head) >= 6 and "/models/cache/" in head[5]
        elif in_cache and line.startswith("Pss:"):
            total += int(head[1])
    return total


def measure(spec: str, store: str, n: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Summed PSS of ``n`` processes holding the data of ``spec`` in ``store``."""
    start = time.perf_counter()
    settings = json.dumps({**overrides, "dataset.store": store})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD, spec, settings],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line.startswith("ready"):
                raise RuntimeError(f"a holder process failed (exit {proc.wait()})")
        pss = [pss_kib(p.pid) for p in procs]
        mapped = [mapped_cache_kib(p.pid) for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {
        "store": store,
        "workers": n,
        "pss_mib_total": round(sum(pss) / 1024, 1),
        "pss_mib_per_worker": [round(p / 1024, 1) for p in pss],
        "mapped_store_pss_mib": round(sum(mapped) / 1024, 1),
        "own_pss_mib_per_worker": [
            round((p - m) / 1024, 1) for p, m in zip(pss, mapped, strict=True)
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--stores", nargs="+", default=["memory", "mmap"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    measure(args.spec, "mmap", 1, overrides)  # decodes the folder once, if its cache is missing
    rows = [measure(args.spec, store, n, overrides) for store in args.stores for n in args.workers]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    one = {r["store"]: r["pss_mib_total"] for r in rows if r["workers"] == min(args.workers)}
    head = ("store", "workers", "PSS MiB", "x one", "mapped", "own/worker")
    print("{:8} {:>7} {:>9} {:>6} {:>8} {:>10}".format(*head))
    for r in rows:
        ratio = r["pss_mib_total"] / one[r["store"]]
        own = sum(r["own_pss_mib_per_worker"]) / r["workers"]
        print(
            f"{r['store']:8} {r['workers']:7d} {r['pss_mib_total']:9.1f} {ratio:6.2f} "
            f"{r['mapped_store_pss_mib']:8.1f} {own:10.1f}"
        )


if __name__ == "__main__":
    main()
