"""The ``kdsearch`` command line: parse, call, print.

Only argparse is imported at start so that ``kdsearch --help`` answers at once; each command
imports torch, Optuna and pandas when it runs. A :class:`~kdsearch.errors.KDSearchError` is
printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def report_errors(fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a user-fixable error becomes one line on stderr and exit code 2."""
    from kdsearch.errors import KDSearchError

    try:
        return fn() or 0
    except KDSearchError as err:
        print(f"kdsearch: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("kdsearch: interrupted", file=sys.stderr)
        return 130


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def _load_spec(path: str, overrides: list[str] | None = None) -> Any:
    from kdsearch import spec as specs

    spec = specs.load(path)
    if overrides:
        spec = spec.with_overrides(dict(_parse_set(o) for o in overrides))
    return spec


def _parse_set(item: str) -> tuple[str, Any]:
    import yaml

    from kdsearch.errors import KDSearchError

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise KDSearchError(f"--set {item!r}: expected key=value, e.g. distill.alpha=0")
    return key.strip(), yaml.safe_load(value)


# --- commands -----------------------------------------------------------------------------


def cmd_validate(a: argparse.Namespace) -> int:
    from kdsearch import study

    spec = _load_spec(a.spec)
    study.make_sampler(spec)
    study.make_pruner(spec)
    if a.json:
        _print_json(spec.to_dict())
    else:
        print(f"{a.spec}: ok (study {spec.name}, {len(spec.search.space)} searched parameters)")
    return 0


def _train(spec: Any, out: Path, device: str | None, as_json: bool, **extra: Any) -> int:
    from kdsearch.experiment import Context, train_student

    ctx = Context.load(spec, device)
    outcome = train_student(
        ctx, spec, out, tensorboard_dir=extra.get("tensorboard_dir"), init=extra.get("init")
    )
    result = {
        "checkpoint": str(out),
        "val_accuracy": outcome.val_accuracy,
        "test_accuracy": outcome.test_accuracy,
        "best_epoch": outcome.history.best_epoch + 1,
        "parameters": outcome.parameters,
        "train_seconds": round(outcome.history.train_seconds, 2),
        "images_per_second": round(outcome.history.images_per_second, 1),
    }
    if as_json:
        _print_json(result)
    else:
        print(
            f"wrote {out}: val accuracy {outcome.val_accuracy:.4f}, "
            f"test accuracy {outcome.test_accuracy:.4f} (best epoch {result['best_epoch']})"
        )
    return 0


def cmd_train_teacher(a: argparse.Namespace) -> int:
    from kdsearch.paths import resolve

    spec = _load_spec(a.spec)
    teacher_spec = spec.teacher_spec()
    out = (
        Path(a.out)
        if a.out
        else resolve(spec.teacher.checkpoint or f"models/{spec.name}-teacher.pt")
    )
    init = Path(a.init) if a.init else None
    return _train(teacher_spec, out, a.device, a.json, init=init)


def cmd_train(a: argparse.Namespace) -> int:
    from kdsearch.paths import resolve

    spec = _load_spec(a.spec, a.set)
    out = Path(a.out) if a.out else resolve(f"models/{spec.name}-student.pt")
    return _train(spec, out, a.device, a.json)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from kdsearch.evaluate import evaluate_checkpoint, format_report

    result = evaluate_checkpoint(Path(a.checkpoint), a.spec, a.device)
    print(json.dumps(result) if a.json else format_report(result))
    return 0


def cmd_create_study(a: argparse.Namespace) -> int:
    from kdsearch import storage, study

    spec = _load_spec(a.spec)
    study.make_sampler(spec)  # a bad sampler or pruner fails before the database is touched
    study.make_pruner(spec)
    url = storage.resolve_url(a.storage, spec.storage)
    name = a.study_name or spec.name
    study.create(spec, storage.open_storage(url), name, a.load_if_exists)
    print(f"study {name} in {storage.mask(url)}")
    print(f"next: kdsearch worker --study {name} --storage '{storage.mask(url)}'")
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from kdsearch import storage, study, worker

    url = storage.resolve_url(a.storage)
    # Fail fast, in the parent, on an unreachable database or an unknown study.
    study.load_spec(storage.open_storage(url), a.study)
    devices = a.devices.split(",") if a.devices else worker.default_devices()
    if a.n_workers == 1:  # no child process: this process is the worker (and gets the signals)
        worker.configure_logging(0)
        return worker.run(a.study, 0, devices[0], a.n_trials, a.timeout, url)
    return worker.spawn(a.study, url, a.n_workers, devices, a.n_trials, a.timeout)


def cmd_export_table(a: argparse.Namespace) -> int:
    from kdsearch import export

    return export.main(a)


def cmd_dashboard(a: argparse.Namespace) -> int:
    import optuna_dashboard

    from kdsearch import storage

    url = storage.resolve_url(a.storage)
    print(f"optuna-dashboard on http://{a.host}:{a.port} for {storage.mask(url)}", flush=True)
    optuna_dashboard.run_server(storage.open_storage(url), host=a.host, port=a.port)
    return 0


def cmd_nets(a: argparse.Namespace) -> int:
    from kdsearch import nets

    rows = []
    for arch in nets.names():
        model = nets.create(arch, num_classes=a.num_classes)
        rows.append(
            {
                "arch": arch,
                "parameters": nets.count_parameters(model),
                "mflops": round(nets.forward_flops(model) / 1e6, 1),
                "kwargs": nets.kwarg_names(arch),
            }
        )
    if a.json:
        _print_json(rows)
    else:
        for r in rows:
            print(
                f"{r['arch']:<18} {r['parameters']:>12,} params {r['mflops']:>10,.1f} MFLOPs  "
                f"kwargs: {', '.join(r['kwargs']) or '-'}"
            )
    return 0


def cmd_import_checkpoint(a: argparse.Namespace) -> int:
    from kdsearch import checkpoint

    kwargs = dict(_parse_set(k) for k in a.kwarg)
    checkpoint.import_reference(
        Path(a.path), a.arch, Path(a.out), a.num_classes, kwargs, a.normalization
    )
    print(f"wrote {a.out} ({a.arch}, {a.num_classes} classes, {a.normalization} normalization)")
    return 0


def cmd_cache_teacher(a: argparse.Namespace) -> int:
    from kdsearch import storage, study
    from kdsearch.experiment import Context
    from kdsearch.teacher import build_or_load, load_teacher

    if a.study:
        spec = study.load_spec(storage.open_storage(storage.resolve_url(a.storage)), a.study)
    elif a.spec:
        spec = _load_spec(a.spec)
    else:
        raise SystemExit("kdsearch cache-teacher: give a SPEC or --study NAME")
    ctx = Context.load(spec, a.device, with_teacher=False)
    model = load_teacher(spec, ctx.num_classes).to(ctx.device)
    cached, path = build_or_load(model, ctx.data, spec)
    print(f"teacher cache {path}: {tuple(cached.table.shape)} fp16 logits")
    return 0


def cmd_best(a: argparse.Namespace) -> int:
    from kdsearch import best

    return best.main(a)


def cmd_report(a: argparse.Namespace) -> int:
    from kdsearch import report

    return report.main(a)


def cmd_storage_proxy(a: argparse.Namespace) -> int:
    import warnings

    import optuna

    from kdsearch import storage

    url = storage.resolve_url(a.storage)
    print(f"gRPC storage proxy on {a.host}:{a.port} for {storage.mask(url)}", flush=True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.storages.run_grpc_proxy_server(storage.open_storage(url), host=a.host, port=a.port)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from kdsearch import bench

    return bench.main(a)


# --- parser -------------------------------------------------------------------------------


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="database URL (default: $KDSEARCH_STORAGE, else the spec's, else "
        "sqlite:///kdsearch.db)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsearch",
        description="Hyperparameter search for knowledge distillation, on PyTorch and Optuna.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add("validate", cmd_validate, "check a study spec and print it resolved")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true", help="print the validated spec as JSON")

    p = add("train-teacher", cmd_train_teacher, "train the spec's teacher")
    p.add_argument("spec")
    p.add_argument("--out", help="checkpoint path (default: teacher.checkpoint)")
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="fine-tune: start from this kdsearch checkpoint (same arch and classes) and keep "
        "its input normalization",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the spec's train.device)")
    p.add_argument("--json", action="store_true")

    p = add("train", cmd_train, "train one student with fixed hyperparameters")
    p.add_argument("spec")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. distill.alpha=0 for the baseline",
    )
    p.add_argument("--out", help="checkpoint path (default: models/<name>-student.pt)")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")

    p = add("evaluate", cmd_evaluate, "test accuracy, per-class accuracy and size of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--spec", help="spec whose data set to test on (default: the checkpoint's)")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")

    p = add("create-study", cmd_create_study, "create the Optuna study for a spec")
    p.add_argument("spec")
    _storage_arg(p)
    p.add_argument("--study-name", help="default: the spec's name")
    p.add_argument(
        "--load-if-exists",
        action="store_true",
        help="reuse an existing study if its stored spec equals this one",
    )

    p = add("worker", cmd_worker, "run trials of a study in parallel worker processes")
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--n-workers", type=int, default=1)
    p.add_argument(
        "--devices", help="comma list: cpu or cuda:0,cuda:1 (default: all GPUs, else cpu)"
    )
    p.add_argument("--n-trials", type=int, help="at most this many trials per worker")
    p.add_argument("--timeout", type=float, help="stop taking trials after this many seconds")

    p = add("export-table", cmd_export_table, "the study's trials as a table")
    p.add_argument("--study", help="study name")
    _storage_arg(p)
    p.add_argument("-o", "--output", help="file to write (format from its suffix)")
    p.add_argument("--format", choices=["csv", "markdown", "json", "latex", "parquet"])
    p.add_argument("--top", type=int, help="only the best K trials")
    p.add_argument("--columns", metavar="A,B,...", help="only these columns, in this order")
    p.add_argument("--state", choices=["complete", "pruned", "all"], default="all")
    p.add_argument(
        "--pivot",
        metavar="ROW,COL",
        help="best validation accuracy over two parameters, e.g. alpha,temperature",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="STUDY",
        help="one row per study: best val accuracy, its test accuracy, parameters",
    )

    p = add("dashboard", cmd_dashboard, "serve optuna-dashboard on the study database")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)

    p = add("nets", cmd_nets, "list the architectures with parameter counts and FLOPs")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--json", action="store_true")

    p = add(
        "import-checkpoint",
        cmd_import_checkpoint,
        "convert a reference best.pth.tar or state dict into a kdsearch checkpoint",
    )
    p.add_argument("path")
    p.add_argument("--arch", required=True)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument(
        "--normalization",
        "--dataset",
        default="cifar10",
        help="input normalization the net was trained with: cifar10, cifar100, imagenet or "
        "MEAN,MEAN,MEAN/STD,STD,STD (default: cifar10)",
    )
    p.add_argument("--kwarg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)

    p = add("cache-teacher", cmd_cache_teacher, "precompute the teacher's logits for every view")
    p.add_argument("spec", nargs="?")
    p.add_argument("--study")
    _storage_arg(p)
    p.add_argument("--device")

    p = add("best", cmd_best, "test the best trial's checkpoint, or retrain it over seeds")
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the best parameters on train+val for each seed",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds for --retrain")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")

    p = add("report", cmd_report, "plots and a report.md for a study")
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("-o", "--output", help="folder (default: reports/<study>)")

    p = add(
        "storage-proxy",
        cmd_storage_proxy,
        "serve the storage through Optuna's gRPC proxy (for very many workers)",
    )
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=13000)

    p = add("bench", cmd_bench, "time a reference-style KD loop against kdsearch's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, help="synthetic training images (default by device)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return report_errors(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
