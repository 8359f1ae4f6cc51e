"""Memory of N worker processes holding a data set: each its own copy, or one mapped store;
each its own runtime, or one shared through the worker's forkserver.

    .venv/bin/python bench/memory.py studies/imagenette.yaml --workers 1 4
    .venv/bin/python bench/memory.py SPEC --set dataset.image_size=128 --workers 1 4 --json

Stores: ``memory`` (every process reads the decoded cache into its own memory, kdsearch's path
before the mapped store) and ``mmap`` (every process maps one file). Starts: ``spawn`` (a fresh
interpreter per process, how workers started before; also what one worker is, since
``--n-workers 1`` runs in the command's own process) and ``forkserver`` (forked from
:func:`kdsearch.search.worker.runtime_context`'s server, which imported torch and the rest once,
how ``kdsearch worker --n-workers N`` starts them now). For each, N processes load the spec's
splits as a worker does (``Context.load`` without the teacher), read every training,
validation and test pixel once (an epoch touches them all), and wait. The figure is the sum of
the proportional set sizes (PSS, ``/proc/PID/smaps_rollup``) of those processes and of the
forkserver: a page shared by k processes counts 1/k to each, so the sum is what the machine
really holds. It is split into the mapped store's share (the same whatever the number of
workers) and the rest (the runtime, the heap and, in memory, each copy of the images).
The decoded cache is built before the first measurement, so decoding is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing
import os
import queue
import time
from pathlib import Path
from typing import Any

import yaml


def hold(spec_path: str, settings: str, ready: Any) -> None:
    """In a holder process: load the data as a worker does, touch every pixel, report, wait."""
    from kdsearch.config import spec as specs
    from kdsearch.training.experiment import Context

    spec = specs.load(spec_path).with_overrides(json.loads(settings))
    ctx = Context.load(spec, "cpu", with_teacher=False)
    # Every byte read once; a max of uint8 makes no temporary bigger than the chunk, so the
    # holder's heap is a worker's at rest, not inflated by the bench's own reading.
    for images in (ctx.data.train, ctx.data.val, ctx.data.test):
        for first in range(0, len(images), 64):
            images.chunk(first, first + 64).amax()
    ready.put((os.getpid(), os.getppid()))
    time.sleep(3600)


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


def measure(spec: str, store: str, start: str, n: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Summed PSS of ``n`` processes started by ``start`` holding the data of ``spec``."""
    from kdsearch.search import worker

    began = time.perf_counter()
    settings = json.dumps({**overrides, "dataset.store": store})
    if start == "forkserver":
        context = worker.runtime_context()
    else:
        context = multiprocessing.get_context(start)
    ready = context.Queue()
    # By module name, not __main__, so a forked holder finds the function.
    target = importlib.import_module(Path(__file__).stem).hold
    procs = [context.Process(target=target, args=(spec, settings, ready)) for _ in range(n)]
    for proc in procs:
        worker.start(proc)
    try:
        pids, parents = [], set()
        while len(pids) < n:
            if any(p.exitcode is not None for p in procs):
                raise SystemExit(f"a holder process failed (exit {procs[0].exitcode}); see above")
            with contextlib.suppress(queue.Empty):
                pid, parent = ready.get(timeout=1)
                pids.append(pid)
                parents.add(parent)
        servers = sorted(parents - {os.getpid()})  # the forkserver, counted with its workers
        pss = [pss_kib(p) for p in pids]
        server_pss = sum(pss_kib(p) for p in servers)
        mapped = [mapped_cache_kib(p) for p in pids]
    finally:
        for proc in procs:
            proc.kill()
            proc.join()
    return {
        "store": store,
        "start": start,
        "workers": n,
        "pss_mib_total": round((sum(pss) + server_pss) / 1024, 1),
        "pss_mib_per_worker": [round(p / 1024, 1) for p in pss],
        "forkserver_pss_mib": round(server_pss / 1024, 1),
        "mapped_store_pss_mib": round(sum(mapped) / 1024, 1),
        "own_pss_mib_per_worker": [
            round((p - m) / 1024, 1) for p, m in zip(pss, mapped, strict=True)
        ],
        "seconds": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--stores", nargs="+", default=["memory", "mmap"])
    parser.add_argument("--starts", nargs="+", default=["spawn", "forkserver"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    measure(args.spec, "mmap", "spawn", 1, overrides)  # decodes the folder once, if needed
    rows = [
        measure(args.spec, store, start, n, overrides)
        for store in args.stores
        for start in args.starts
        for n in args.workers
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    # One worker is one fresh process (--n-workers 1 runs in the command's own process).
    one = {
        r["store"]: r["pss_mib_total"]
        for r in rows
        if r["workers"] == min(args.workers) and r["start"] == args.starts[0]
    }
    head = ("store", "start", "workers", "PSS MiB", "x one", "mapped", "server", "own/worker")
    print("{:8} {:10} {:>7} {:>9} {:>6} {:>8} {:>7} {:>10}".format(*head))
    for r in rows:
        ratio = r["pss_mib_total"] / one[r["store"]]
        own = sum(r["own_pss_mib_per_worker"]) / r["workers"]
        print(
            f"{r['store']:8} {r['start']:10} {r['workers']:7d} {r['pss_mib_total']:9.1f} "
            f"{ratio:6.2f} {r['mapped_store_pss_mib']:8.1f} {r['forkserver_pss_mib']:7.1f} "
            f"{own:10.1f}"
        )


if __name__ == "__main__":
    main()
