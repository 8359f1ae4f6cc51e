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
from dataclasses import dataclass
from typing import Any


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def _parse_set(item: str) -> tuple[str, Any]:
    import yaml

    from kdsearch.errors import KDSearchError

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise KDSearchError(f"--set {item!r}: expected key=value, e.g. distill.alpha=0")
    return key.strip(), yaml.safe_load(value)


# --- commands -----------------------------------------------------------------------------


def _args_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument(
        "--data",
        action="store_true",
        help="also decode every image of an image folder and list every unreadable file "
        "(slower; the default lists folders and files only)",
    )
    _json_arg(p, "the resolved spec (the data check's lines go to stderr)")


def cmd_validate(a: argparse.Namespace) -> int:
    from kdsearch import api

    spec = api.validate(a.spec)
    checked = api.data_check_text(api.check_data(spec, thorough=a.data))
    if a.json:
        _print_json(spec.public_dict())
        if checked:
            print(checked, file=sys.stderr)
    else:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(spec.public_dict())), sort_keys=False), end="")
        if checked:
            print(checked)
        n = len(spec.search.space)
        searched = f"{n} searched parameter{'' if n == 1 else 's'}"
        print(f"# {a.spec}: ok (study {spec.name}, {searched})")
    return 0


def _args_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="image folder: train/<class>/ and val/ or test/")
    p.add_argument("--teacher", required=True, metavar="ARCH", help="teacher architecture")
    p.add_argument("--student", required=True, metavar="ARCH", help="student architecture")
    p.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs per trial; the teacher trains half as many again (default: 10)",
    )
    p.add_argument("--trials", type=int, metavar="N", help="the trial budget (default: 12)")
    p.add_argument("-o", "--out", help="spec file to write (default: studies/<folder>.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing spec file")
    _json_arg(p, "the scan and where the spec was written")


def cmd_init(a: argparse.Namespace) -> int:
    from kdsearch import api

    result = api.init_spec(
        a.data, a.teacher, a.student, a.out, force=a.force, epochs=a.epochs, trials=a.trials
    )
    if a.json:
        _print_json(result)
    else:
        print(api.init_text(result), file=sys.stderr)
    return 0


def _print_trained(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        _print_json(result)
    else:
        print(
            f"wrote {result['checkpoint']}: val accuracy {result['val_accuracy']:.4f}, "
            f"test accuracy {result['test_accuracy']:.4f} (best epoch {result['best_epoch']})"
        )
    return 0


def _args_train_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument("--out", help="checkpoint path (default: the spec's teacher.checkpoint)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing, different teacher (studies built on it no longer match)",
    )
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="fine-tune: start from this kdsearch checkpoint (same arch) and keep its input "
        "normalization; a head for another class count is replaced",
    )
    _device_arg(p)
    _json_arg(p)


def cmd_train_teacher(a: argparse.Namespace) -> int:
    from kdsearch import api

    return _print_trained(
        api.train_teacher(a.spec, a.out, force=a.force, device=a.device, init=a.init), a.json
    )


def _args_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec (YAML)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. distill.alpha=0 for the baseline",
    )
    p.add_argument("--out", help="checkpoint path (default: models/<name>-student.pt)")
    _device_arg(p)
    _json_arg(p)


def cmd_train(a: argparse.Namespace) -> int:
    from kdsearch import api

    overrides = dict(_parse_set(o) for o in a.set)
    result = api.train_student(a.spec, a.out, overrides=overrides, device=a.device)
    return _print_trained(result, a.json)


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a kdsearch checkpoint (.pt)")
    p.add_argument("--spec", help="spec whose data set to test on (default: the checkpoint's)")
    _device_arg(p)
    _json_arg(p, "the report")


def cmd_evaluate(a: argparse.Namespace) -> int:
    from kdsearch import api

    result = api.evaluate_checkpoint(a.checkpoint, a.spec, device=a.device)
    print(json.dumps(result) if a.json else api.evaluation_text(result))
    return 0


def _args_export_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="a kdsearch checkpoint (default: --study's best)")
    p.add_argument("--study", help="export this study's best trial's checkpoint")
    _storage_arg(p)
    p.add_argument(
        "--format", choices=("onnx", "torchscript"), default="onnx", help="file format (onnx)"
    )
    p.add_argument("-o", "--out", help="the file to write (default: NAME.onnx / NAME.ts here)")
    p.add_argument(
        "--images",
        nargs="+",
        default=(),
        metavar="IMAGE",
        help="check the export on these images (default: random pixels)",
    )
    p.add_argument("--tolerance", type=float, help="largest logit difference allowed (1e-4)")
    _json_arg(p, "what was written, checked and measured")


def cmd_export_model(a: argparse.Namespace) -> int:
    from kdsearch import api

    result = api.export_model(
        a.checkpoint,
        study=a.study,
        storage=a.storage,
        format=a.format,
        out=a.out,
        images=a.images,
        tolerance=a.tolerance,
    )
    print(json.dumps(result) if a.json else api.export_text(result))
    return 0


def _args_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a kdsearch checkpoint, or an ONNX / TorchScript export")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("-k", "--top-k", type=int, default=5, help="classes per image (5)")
    _json_arg(p, "the predictions")


def cmd_predict(a: argparse.Namespace) -> int:
    from kdsearch import api

    rows = api.predict(a.model, a.images, top_k=a.top_k)
    print(json.dumps(rows) if a.json else api.predict_text(rows))
    return 0


def _args_create_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec (YAML)")
    _storage_arg(p)
    p.add_argument("--study-name", help="study name (default: the spec's name)")
    p.add_argument(
        "--load-if-exists",
        action="store_true",
        help="reuse an existing study if its stored spec equals this one "
        "(a larger search.n_trials: use `kdsearch extend`)",
    )


def cmd_create_study(a: argparse.Namespace) -> int:
    from kdsearch import api

    spec = api.validate(a.spec)
    url = api.storage_url(a.storage, spec)
    name = api.create_study(spec, url, study_name=a.study_name, load_if_exists=a.load_if_exists)
    print(f"study {name.study_name} in {api.masked(url)}")
    print(f"next: kdsearch worker --study {name.study_name} --storage '{api.masked(url)}'")
    return 0


def _args_worker(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument(
        "--n-workers", type=int, default=1, help="worker processes, round-robin over --devices"
    )
    p.add_argument(
        "--devices", help="comma list: cpu or cuda:0,cuda:1 (default: all GPUs, else cpu)"
    )
    p.add_argument(
        "--n-trials",
        type=int,
        help="at most this many trials per worker, >= 1 (default: until the study's budget)",
    )
    p.add_argument(
        "--timeout", type=float, help="stop taking trials after this many seconds (default: none)"
    )
    p.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        default=0,
        help="warnings and errors only: no epoch or trial lines, no bar, no summary "
        "(default: one line per epoch and per trial, and a summary)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        help="debug lines too, and Optuna's own per-trial lines",
    )


def cmd_worker(a: argparse.Namespace) -> int:
    from kdsearch import api

    code = api.run_workers(
        a.study,
        a.storage,
        n_workers=a.n_workers,
        devices=a.devices,
        n_trials=a.n_trials,
        timeout=a.timeout,
    )
    if a.verbosity >= 0:
        (summary,) = api.study_status(a.storage, a.study)
        print(f"summary of study {api.status_text(summary)}", file=sys.stderr)
    return code


def _budgets(a: argparse.Namespace) -> dict[str, float]:
    limits = {"student_params": a.max_params, "flops": a.max_flops, "latency_ms": a.max_latency_ms}
    return {k: v for k, v in limits.items() if v is not None}


def _args_confirm(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--top", type=int, metavar="K", help="confirm the K best configurations")
    p.add_argument("--seeds", type=int, metavar="N", help="new seeds per configuration")
    _budget_args(p, "Pareto members")


def cmd_confirm(a: argparse.Namespace) -> int:
    from kdsearch import api

    url = api.storage_url(a.storage)
    queued = api.confirm_study(a.study, url, top=a.top, seeds=a.seeds, budgets=_budgets(a))
    configs = sorted({n for n, _ in queued})
    if queued:
        print(
            f"study {a.study}: queued {len(queued)} confirmation trials "
            f"(trials {', '.join(map(str, configs))}, seeds {sorted({s for _, s in queued})})"
        )
        print(f"next: kdsearch worker --study {a.study} --storage '{api.masked(url)}'")
    else:
        print(f"study {a.study}: every asked confirmation run is queued, running or done")
    return 0


def _args_submit(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument(
        "--storage-file",
        metavar="FILE",
        help="read the database URL from FILE (chmod 600; default: $KDSEARCH_STORAGE_FILE): "
        "the way to give a URL with a password, which Slurm must never keep",
    )
    p.add_argument(
        "--slurm", action="store_true", required=True, help="submit to Slurm (sbatch job array)"
    )
    p.add_argument("--tasks", type=int, required=True, help="array tasks: one worker each")
    p.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per task; 0: CPU workers")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPU cores per task")
    p.add_argument("--time", default="4:00:00", help="time limit per task (Slurm's format)")
    p.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    p.add_argument("--account", help="Slurm account to charge (default: yours)")
    p.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more sbatch option for the script, e.g. --sbatch-arg=--qos=long (repeatable)",
    )
    p.add_argument(
        "--output-dir",
        help="folder for the tasks' output files (default: the study's folder, slurm/)",
    )
    p.add_argument(
        "--signal-seconds",
        type=int,
        help="SIGTERM this many seconds before the time limit: the worker stops after its "
        "epoch and the trial resumes in a later task (default: 120)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the script instead of submitting it"
    )
    _json_arg(p)


def cmd_submit(a: argparse.Namespace) -> int:
    from kdsearch import api

    result = api.submit(
        a.study,
        a.storage,
        tasks=a.tasks,
        time=a.time,
        gpus_per_task=a.gpus_per_task,
        cpus_per_task=a.cpus_per_task,
        partition=a.partition,
        account=a.account,
        sbatch_args=a.sbatch_arg,
        storage_file=a.storage_file,
        output_dir=a.output_dir,
        signal_seconds=a.signal_seconds,
        dry_run=a.dry_run,
    )
    if a.json:
        _print_json(result)
    elif a.dry_run:
        print(result["script"], end="")
    else:
        print(result["job_id"])
        print(
            f"study {a.study}: {a.tasks} workers as Slurm job {result['job_id']}; output in "
            f"{result['output_dir']}; see: kdsearch status --study {a.study}; cancel: "
            f"scancel --name={result['job_name']}",
            file=sys.stderr,
        )
    return 0


def _args_status(p: argparse.ArgumentParser) -> None:
    _study_arg(p, required=False, what=" (default: every study in the storage)")
    _storage_arg(p)
    _json_arg(p, "a list with one object per study (keys: README, `kdsearch status`)")


def cmd_status(a: argparse.Namespace) -> int:
    from kdsearch import api

    rows = api.study_status(a.storage, a.study)
    if a.json:
        _print_json(rows)
    else:
        print("\n".join(api.status_text(r) for r in rows) or "no studies in this storage")
    return 0


def _args_extend(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument(
        "--n-trials", type=int, required=True, help="the new budget, larger than the current one"
    )


def cmd_extend(a: argparse.Namespace) -> int:
    from kdsearch import api

    url = api.storage_url(a.storage)
    old = api.extend_study(a.study, a.n_trials, url)
    print(f"study {a.study}: budget {old} -> {a.n_trials} trials")
    print(f"next: kdsearch worker --study {a.study} --storage '{api.masked(url)}'")
    return 0


def _args_delete(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def cmd_delete(a: argparse.Namespace) -> int:
    from kdsearch import api
    from kdsearch.errors import KDSearchError

    def ask(question: str) -> bool:
        if not sys.stdin.isatty():
            raise KDSearchError(f"delete {a.study}: no terminal to confirm on; pass --yes")
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    removed = api.delete_study(a.study, a.storage, ask=None if a.yes else ask)
    if removed is False:
        print("nothing deleted")
        return 1
    print(f"deleted study {a.study}" + (f" and {removed}" if removed else ""))
    return 0


def _args_export_table(p: argparse.ArgumentParser) -> None:
    _study_arg(p, required=False, what=" (required unless --compare)")
    _storage_arg(p)
    p.add_argument("-o", "--output", help="file to write (format from its suffix)")
    p.add_argument(
        "--format",
        choices=["csv", "markdown", "json", "latex", "parquet"],
        help="table format (default: from --output's suffix, else markdown)",
    )
    p.add_argument(
        "--top", type=int, metavar="K", help="only the best K trials, K >= 1 (default: all)"
    )
    p.add_argument("--columns", metavar="A,B,...", help="only these columns, in this order")
    p.add_argument(
        "--state", choices=["complete", "pruned", "all"], default="all", help="which trials"
    )
    p.add_argument(
        "--pareto",
        action="store_true",
        help="only the non-dominated trials (the Pareto front), objective columns first",
    )
    p.add_argument(
        "--pivot",
        metavar="ROW,COL",
        help="best validation accuracy over two parameters, e.g. alpha,temperature; "
        "a continuous one is cut into --bins quantile ranges",
    )
    p.add_argument(
        "--bins",
        type=int,
        default=4,
        metavar="K",
        help="ranges per parameter for --pivot (default: 4)",
    )
    p.add_argument(
        "--by",
        choices=["auto", "trial", "configuration"],
        default="auto",
        help="one row per trial, or per configuration (mean ± std over its seeds, tie marks); "
        "auto: per configuration once the study has confirmation trials",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="STUDY",
        help="one row per study: best val accuracy, its test accuracy, parameters",
    )


def cmd_export_table(a: argparse.Namespace) -> int:
    from kdsearch import api
    from kdsearch.errors import KDSearchError

    if a.top is not None and a.top < 1:
        raise KDSearchError(f"--top {a.top}: must be >= 1")
    if a.compare:
        df = api.compare_studies(a.compare, a.storage)
    elif not a.study:
        raise KDSearchError("export-table: give --study NAME (or --compare STUDY ...)")
    else:
        row, _, col = (a.pivot or "").partition(",")
        columns = [c.strip() for c in a.columns.split(",")] if a.columns else None
        df = api.trials_table(
            a.study,
            a.storage,
            state=a.state,
            top=a.top,
            columns=columns,
            pivot=(row, col) if a.pivot else None,
            bins=a.bins,
            pareto=a.pareto,
            by=a.by,
        )
        if df.empty:
            # No columns to write either (they come from the trials): say so, write nothing.
            which = "" if a.state == "all" else f" {a.state}"
            print(
                f"kdsearch: study {a.study!r} has no{which} trials yet; nothing written",
                file=sys.stderr,
            )
            return 0
    if a.output is not None:
        api.write_table(df, a.output, a.format)
    else:
        print(api.table_text(df, a.format))
    if "confidence" in df.attrs:
        print(f"kdsearch: {df.attrs['confidence']}", file=sys.stderr)
    if "gain" in df.attrs:
        print(f"kdsearch: {df.attrs['gain']['summary']}", file=sys.stderr)
    return 0


def _args_dashboard(p: argparse.ArgumentParser) -> None:
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument(
        "--artifact-store",
        help="folder or s3://bucket whose files (report figures, spec) the dashboard shows "
        "(default: the one the studies' specs name)",
    )


def cmd_dashboard(a: argparse.Namespace) -> int:
    from kdsearch import api

    api.serve_dashboard(
        a.storage, host=a.host, port=a.port, artifact_store=a.artifact_store, say=_say
    )
    return 0


def _say(line: str) -> None:
    """A server's lines: a warning to stderr, the rest to stdout, at once (it runs for long)."""
    warning = line.startswith("warning:")
    print(
        f"kdsearch: {line}" if warning else line,
        file=sys.stderr if warning else sys.stdout,
        flush=True,
    )


def _args_nets(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "pattern",
        nargs="?",
        help="list the networks matching this shell pattern instead of the zoo "
        "(e.g. 'timm:mobilenet*', 'torchvision:resnet*')",
    )
    p.add_argument("--num-classes", type=int, default=10, help="output classes of each net")
    p.add_argument("--image-size", type=int, default=32, help="input side for the FLOPs (px)")
    _json_arg(p, "the list")


def cmd_nets(a: argparse.Namespace) -> int:
    from kdsearch import api

    rows = api.list_nets(a.num_classes, a.pattern, a.image_size)
    if a.json:
        _print_json(rows)
    else:
        width = max(18, *(len(r["arch"]) for r in rows))
        for r in rows:
            print(
                f"{r['arch']:<{width}} {r['parameters']:>12,} params {r['mflops']:>10,.1f} "
                f"MFLOPs at {r['image_size']} px  kwargs: {', '.join(r['kwargs']) or '-'}"
            )
        if a.pattern is None:
            print(LIBRARY_NETS)
    return 0


def _args_import_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the reference checkpoint")
    p.add_argument(
        "--arch",
        required=True,
        help="kdsearch architecture (see `kdsearch nets`), torchvision:NAME or timm:NAME",
    )
    p.add_argument(
        "--num-classes", type=int, default=10, help="output classes of the net (ImageNet: 1000)"
    )
    p.add_argument(
        "--normalization",
        "--dataset",
        help="input normalization the net was trained with: cifar10, cifar100, imagenet or "
        "MEAN,MEAN,MEAN/STD,STD,STD (default: imagenet for torchvision: and timm: models, "
        "their own convention; cifar10 for the zoo's)",
    )
    p.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, repeatable, e.g. num_channels=32",
    )
    p.add_argument("--out", required=True, help="kdsearch checkpoint to write")


def cmd_import_checkpoint(a: argparse.Namespace) -> int:
    from kdsearch import api

    kwargs = dict(_parse_set(k) for k in a.kwarg)
    norm = api.import_checkpoint(
        a.path,
        a.arch,
        a.out,
        num_classes=a.num_classes,
        kwargs=kwargs,
        normalization=a.normalization,
    )
    print(f"wrote {a.out} ({a.arch}, {a.num_classes} classes, {norm} normalization)")
    return 0


def _args_cache_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="study spec (YAML), or give --study")
    _study_arg(p, required=False, what=" whose stored spec to use")
    _storage_arg(p)
    _device_arg(p)


def cmd_cache_teacher(a: argparse.Namespace) -> int:
    from kdsearch import api

    path, shape = api.cache_teacher(a.spec, a.study, a.storage, a.device)
    print(f"teacher cache {path}: {shape} fp16 logits")
    return 0


def _args_best(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the best parameters on train+val for each seed",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds for --retrain")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also the alpha = 0 student with the best trial's other hyperparameters and seed "
        "(trained once, then stored on the study)",
    )
    _budget_args(p, "the most accurate trial")
    _device_arg(p)
    _json_arg(p)


def cmd_best(a: argparse.Namespace) -> int:
    from kdsearch import api

    seeds = api.parse_seeds(a.seeds) if a.retrain else []  # a typo fails before any work
    result = api.evaluate_best(
        a.study,
        a.storage,
        retrain=a.retrain,
        seeds=seeds,
        baseline=a.baseline,
        budgets=_budgets(a),
        device=a.device,
    )
    if a.json:
        print(json.dumps(result))
    else:
        print(api.best_text(result))
    return 0


def _args_report(p: argparse.ArgumentParser) -> None:
    _study_arg(p)
    _storage_arg(p)
    p.add_argument("-o", "--output", help="folder (default: reports/<study>)")
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="do not train the alpha = 0 baseline if the study has none (it is trained once)",
    )
    p.add_argument("--device", help="for training the baseline (default: the spec's)")


def cmd_report(a: argparse.Namespace) -> int:
    from kdsearch import api

    def say(line: str) -> None:
        print(line, flush=True)

    api.write_report(
        a.study, a.storage, out=a.output, baseline=not a.no_baseline, device=a.device, say=say
    )
    return 0


def _args_storage_proxy(p: argparse.ArgumentParser) -> None:
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=13000, help="port to listen on")


def cmd_storage_proxy(a: argparse.Namespace) -> int:
    from kdsearch import api

    api.serve_storage_proxy(a.storage, host=a.host, port=a.port, say=_say)
    return 0


def _args_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--images", type=int, help="synthetic training images (default by device)")
    _json_arg(p, "the timings")


def cmd_bench(a: argparse.Namespace) -> int:
    from kdsearch import api

    result = api.benchmark_loop(a.device, a.images)
    if a.json:
        _print_json(result)
    else:
        print(api.loop_benchmark_text(result))
    return 0


def _args_bench_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec with a grid (search.sampler: {name: grid})")
    p.add_argument("--seeds", default="0,1,2", help="comma list of the search's sampler seeds")
    p.add_argument(
        "--budget-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="each search's budget, as a fraction of the grid's epochs",
    )
    p.add_argument(
        "--storage", help="database URL for the studies (default: a temporary SQLite file)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run N workers at once (the grid's points, then one search per seed), "
        "sharing the CPU threads; the accounting is the same as with 1",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        default=0,
        metavar="N",
        help="train each run's winner (the grid's, each search's) again with N new seeds and "
        "report its mean test accuracy, the fairer comparison (default 0: off)",
    )
    p.add_argument(
        "--grid",
        metavar="STUDY",
        help="compare against this finished grid study of the spec in --storage (e.g. one "
        "loaded with bench/study_json.py) instead of running the grid again",
    )
    _json_arg(p, "the table")


def cmd_bench_search(a: argparse.Namespace) -> int:
    from kdsearch import api
    from kdsearch.errors import KDSearchError

    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        raise KDSearchError(f"--seeds: {a.seeds!r} is not a comma list of integers") from None
    result = api.benchmark_search(
        a.spec,
        seeds=seeds,
        budget_fraction=a.budget_fraction,
        storage=a.storage,
        jobs=a.jobs,
        confirm_seeds=a.confirm_seeds,
        grid=a.grid,
    )
    print(json.dumps(result.to_dict()) if a.json else api.search_benchmark_text(result))
    return 0


# --- parser -------------------------------------------------------------------------------


#: How to name a torchvision or timm model; here, not in kdsearch.nets, so help imports no torch.
LIBRARY_NETS = (
    "library models: torchvision:NAME (torchvision.models.list_models()), "
    "timm:NAME (pip install 'kdsearch[timm]'; timm.list_models()); "
    "list them with e.g. kdsearch nets 'timm:mobilenet*' --image-size 224"
)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a real default not already named."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or default in (None, False, argparse.SUPPRESS) or default == []:
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            return f"{text} (default: %(default)s)"
        return text


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="database URL (default: $KDSEARCH_STORAGE, else the spec's, else "
        "sqlite:///kdsearch.db)",
    )


def _study_arg(p: argparse.ArgumentParser, required: bool = True, what: str = "") -> None:
    p.add_argument("--study", required=required, metavar="NAME", help=f"study name{what}")


def _json_arg(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _budget_args(p: argparse.ArgumentParser, which: str) -> None:
    for flag, what in (
        ("--max-params", "student parameters"),
        ("--max-flops", "forward FLOPs per image"),
        ("--max-latency-ms", "latency at batch 1 (ms, on the worker's device)"),
    ):
        p.add_argument(flag, type=float, metavar="N", help=f"{which} with at most N {what}")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the spec's train.device)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kdsearch")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


@dataclass(frozen=True)
class Command:
    """One command: its name and help, the function that adds its options, and its action
    (which calls :mod:`kdsearch.api` and prints)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None


#: Every command, in the order of the workflow: the order ``kdsearch --help`` lists them in.
COMMANDS: tuple[Command, ...] = (
    Command(
        "init",
        "write a commented starter spec for your own image folder",
        _args_init,
        cmd_init,
        epilog="Scans the folder (classes, image sizes, greyscale, unreadable and ignored "
        "files), proposes image_size from the images, and writes a spec that validates.",
    ),
    Command(
        "validate", "check a study spec and print it resolved (YAML)", _args_validate, cmd_validate
    ),
    Command("train-teacher", "train the spec's teacher", _args_train_teacher, cmd_train_teacher),
    Command(
        "import-checkpoint",
        "convert a reference best.pth.tar or a torchvision/timm state dict into a kdsearch "
        "checkpoint",
        _args_import_checkpoint,
        cmd_import_checkpoint,
    ),
    Command(
        "create-study", "create the Optuna study for a spec", _args_create_study, cmd_create_study
    ),
    Command(
        "worker", "run trials of a study in parallel worker processes", _args_worker, cmd_worker
    ),
    Command(
        "status",
        "trials by state, best, live workers, Slurm jobs and time left",
        _args_status,
        cmd_status,
    ),
    Command("extend", "raise a study's trial budget (search.n_trials)", _args_extend, cmd_extend),
    Command(
        "confirm",
        "train the best configurations again with new seeds (run by the workers)",
        _args_confirm,
        cmd_confirm,
        epilog="Queued as trials of the study, counted apart from its budget; workers run them "
        "(kdsearch worker). With several objectives, the most accurate Pareto members are "
        "confirmed. Defaults: the spec's search.confirm, else 3 and 3.",
    ),
    Command("export-table", "the study's trials as a table", _args_export_table, cmd_export_table),
    Command(
        "best", "test the best trial's checkpoint, or retrain it over seeds", _args_best, cmd_best
    ),
    Command("report", "plots and a report.md for a study", _args_report, cmd_report),
    Command(
        "dashboard", "serve optuna-dashboard on the study database", _args_dashboard, cmd_dashboard
    ),
    Command(
        "delete", "delete a study, its checkpoints and TensorBoard logs", _args_delete, cmd_delete
    ),
    Command("train", "train one student with fixed hyperparameters", _args_train, cmd_train),
    Command(
        "evaluate",
        "test accuracy, per-class accuracy and size of a checkpoint",
        _args_evaluate,
        cmd_evaluate,
    ),
    Command(
        "export-model",
        "a checkpoint (or a study's best) as ONNX or TorchScript, checked against it",
        _args_export_model,
        cmd_export_model,
    ),
    Command(
        "predict",
        "top-k class names for images, from a checkpoint or an export",
        _args_predict,
        cmd_predict,
    ),
    Command(
        "nets",
        "list the architectures with parameter counts and FLOPs",
        _args_nets,
        cmd_nets,
        epilog=f"Besides these, {LIBRARY_NETS}; give their arguments as kwargs, "
        "e.g. weights: DEFAULT (torchvision) or pretrained: true (timm).",
    ),
    Command(
        "cache-teacher",
        "precompute the teacher's logits for every view",
        _args_cache_teacher,
        cmd_cache_teacher,
    ),
    Command(
        "storage-proxy",
        "serve the storage through Optuna's gRPC proxy (for very many workers)",
        _args_storage_proxy,
        cmd_storage_proxy,
    ),
    Command(
        "submit",
        "run a study's workers as a Slurm job array",
        _args_submit,
        cmd_submit,
        epilog="Each task runs one `kdsearch worker`; SIGTERM (time limit, scancel, preemption) "
        "stops it after its epoch and its trial resumes in a later task. No password reaches "
        "Slurm: give such a URL with --storage-file. docs/clusters.md.",
    ),
    Command("bench", "time a reference-style KD loop against kdsearch's", _args_bench, cmd_bench),
    Command(
        "bench-search",
        "epochs a TPE + Hyperband search needs to reach the best of a spec's grid",
        _args_bench_search,
        cmd_bench_search,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsearch",
        description="Hyperparameter search for knowledge distillation, on PyTorch and Optuna.",
        epilog=f"Networks: the zoo (kdsearch nets), or {LIBRARY_NETS}.",
    )
    parser.add_argument("--version", action="version", version=f"kdsearch {_version()}")
    parser.add_argument(
        "--threads",
        metavar="N",
        help="CPU threads torch uses in every command and worker (default: $KDSEARCH_THREADS, "
        "else all cores, split among a worker's processes)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            formatter_class=_DefaultsFormatter,
        )
        p.set_defaults(fn=command.run)
        command.arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kdsearch.search import progress

    progress.configure(getattr(args, "verbosity", 0))
    from kdsearch import threads
    from kdsearch.errors import report_errors

    def run() -> int:
        threads.configure(args.threads)  # before any command imports torch
        return args.fn(args)

    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
