"""The Python API: each ``kdsearch`` command as a function that returns data instead of printing.

For notebooks and scripts; the CLI is a thin layer over these functions. Every function takes
the same names as its command's options. ``storage`` is a database URL; left out, it is
``$KDSEARCH_STORAGE``, else ``sqlite:///kdsearch.db`` (:func:`create_study` also falls back on
the spec's ``storage``). A ``study`` is a study's name, or the :class:`optuna.Study` that
:func:`create_study` returned (which remembers its storage). A ``spec`` is a path to a YAML
spec or a :class:`~kdsearch.config.spec.Spec`. Problems a user can fix raise
:class:`~kdsearch.errors.KDSearchError` with a one-line message.

    import kdsearch
    study = kdsearch.create_study("studies/digits_quick.yaml", "sqlite:///kd.db")
    kdsearch.run_workers(study, n_workers=2)
    kdsearch.trials_table(study).head()
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from kdsearch.config.spec import Spec

SpecRef = Union[str, Path, "Spec"]
StudyRef = Union[str, "optuna.Study"]

#: The storage URL of each study :func:`create_study` returned, so later calls need no URL.
_URLS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _spec(spec: SpecRef, overrides: Mapping[str, Any] | None = None) -> Spec:
    from kdsearch.config import spec as specs

    loaded = spec if isinstance(spec, specs.Spec) else specs.load(spec)
    return loaded.with_overrides(dict(overrides)) if overrides else loaded


def _where(study: StudyRef, storage: str | None) -> tuple[str, str | None]:
    """A study's name and URL, from its name or from a Study :func:`create_study` returned."""
    if isinstance(study, str):
        return study, storage
    return study.study_name, storage or _URLS.get(study)


def _at_least(option: str, value: int | None, low: int) -> None:
    from kdsearch.errors import KDSearchError

    if value is not None and value < low:
        raise KDSearchError(f"{option} {value}: must be >= {low}")


def validate(spec: SpecRef, overrides: Mapping[str, Any] | None = None) -> Spec:
    """The spec, loaded and validated, refused if a search on it could never rank a trial.

    ``overrides`` maps dotted keys to values, e.g. ``{"distill.alpha": 0}``.
    """
    from kdsearch.search import study as studies

    loaded = _spec(spec, overrides)
    studies.check(loaded)
    return loaded


def check_data(spec: SpecRef, *, thorough: bool = False) -> dict[str, Any]:
    """What ``validate`` checks beyond the spec: an image folder's layout and classes (listed,
    not decoded, so it stays fast), and, with ``thorough``, every image decoded, all unreadable
    files refused at once; the teacher checkpoint's arch, class count and normalization.

    Returns plain data; ``notes`` are what is fine but worth knowing (a teacher to train yet).
    """
    from kdsearch.data import scan
    from kdsearch.paths import resolve
    from kdsearch.training.teacher import teacher_checkpoint

    loaded = _spec(spec)
    out: dict[str, Any] = {"notes": []}
    num_classes = None
    if loaded.dataset.name == "imagefolder":
        found = scan.layout(resolve(loaded.dataset.root))
        num_classes = len(found.classes)
        out["data"] = found.summary()
        if thorough:
            contents = scan.inspect(found)
            if contents.unreadable and not loaded.dataset.skip_unreadable:
                raise scan.unreadable_error(contents.unreadable)
            out["images"] = contents.summary()
    elif thorough:
        out["notes"].append(f"{loaded.dataset.name} is a built-in data set: no files to decode")
    if loaded.teacher is not None:
        path = resolve(loaded.teacher.checkpoint or f"models/{loaded.name}-teacher.pt")
        if path.is_file():
            ckpt = teacher_checkpoint(loaded, path, num_classes)
            out["teacher"] = {
                "checkpoint": str(path),
                "classes": ckpt["num_classes"],
                "normalization": ckpt["normalization"],
            }
        else:
            out["notes"].append(
                f"teacher.checkpoint {path} does not exist yet: make it with `kdsearch "
                "train-teacher SPEC` (or import-checkpoint) before create-study"
            )
    return out


def data_check_text(report: Mapping[str, Any]) -> str:
    """``check_data``'s report as the comment lines ``validate`` prints under the spec."""
    lines = []
    data = report.get("data")
    if data:
        counts = ", ".join(f"{n} in {split}/" for split, n in data["images"].items())
        lines.append(
            f"# data: {data['root']}: {data['classes']} classes, {counts} "
            f"({data['held_out']}/ is the held-out test split), "
            f"{data['ignored_files']} non-image files ignored"
        )
        if data["unmeasured_classes"]:
            missing = ", ".join(data["unmeasured_classes"])
            lines.append(f"# data: no {data['held_out']}/ images for {missing}: not measured")
    images = report.get("images")
    if images:
        side = images["short_side"]
        lines.append(
            f"# images: {images['readable']} decoded, {images['unreadable']} unreadable "
            f"(skipped), {images['greyscale']} greyscale; shorter side {side['min']}-"
            f"{side['max']} px, median {side['median']}"
        )
    teacher = report.get("teacher")
    if teacher:
        norm = teacher["normalization"]
        lines.append(
            f"# teacher: {teacher['checkpoint']}: {teacher['classes']} classes, input "
            f"normalized with mean {norm['mean']}, std {norm['std']}"
        )
    lines += [f"# note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def init_spec(
    data: str | Path,
    teacher: str,
    student: str,
    out: str | Path | None = None,
    *,
    force: bool = False,
    epochs: int | None = None,
    trials: int | None = None,
) -> dict[str, Any]:
    """Write a commented starter spec for the image folder ``data`` (``kdsearch init``).

    The folder is scanned (layout, classes, every image decoded: sizes, greyscale and
    unreadable files) and ``image_size`` proposed from it; the spec is validated before it is
    written, and an existing file is kept unless ``force``. ``epochs`` per trial (the teacher
    trains half as many again) and the ``trials`` budget default to a real search's, 10 and
    12; fewer make a first search that shows every step in minutes. Returns where it wrote,
    the spec's name and the scan's summary.
    """
    import yaml

    from kdsearch import nets
    from kdsearch.config import spec as specs
    from kdsearch.config import starter
    from kdsearch.data import scan
    from kdsearch.errors import KDSearchError
    from kdsearch.paths import resolve

    _at_least("--epochs", epochs, 1)
    _at_least("--trials", trials, 1)
    nets.check_arch(teacher, "--teacher")
    nets.check_arch(student, "--student")
    found = scan.layout(resolve(data))
    contents = scan.inspect(found)
    if not contents.sizes:
        raise KDSearchError(
            f"--data: none of the {len(contents.unreadable)} images in {data} can be decoded; "
            "check that they are image files"
        )
    name = starter.study_name(found.root.resolve().name)
    path = Path(out) if out is not None else Path("studies") / f"{name}.yaml"
    if path.exists() and not force:
        raise KDSearchError(f"{path} already exists; pass --force to replace it, or -o FILE")
    command = f"kdsearch init --data {data} --teacher {teacher} --student {student}"
    command += "".join(f" --{k} {v}" for k, v in (("epochs", epochs), ("trials", trials)) if v)
    text = starter.write(
        str(data),
        found,
        contents,
        teacher,
        student,
        command,
        epochs or starter.EPOCHS,
        trials or starter.TRIALS,
    )
    loaded = specs.from_dict(yaml.safe_load(text))
    validate(loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return {
        "spec": str(path),
        "name": loaded.name,
        "image_size": loaded.dataset.image_size,
        "data": found.summary(),
        "images": contents.summary(),
    }


def init_text(result: Mapping[str, Any]) -> str:
    """What ``init`` tells the user on stderr: the scan, every unreadable file, and the spec."""
    data, images = result["data"], result["images"]
    side = images["short_side"]
    lines = [
        f"{data['root']}: {data['classes']} classes; "
        + ", ".join(f"{n} images in {split}/" for split, n in data["images"].items())
        + f" ({data['held_out']}/ is the held-out test split); "
        f"{data['ignored_files']} non-image files ignored",
        f"images: {images['greyscale']} greyscale, shorter side {side['min']}-{side['max']} px "
        f"(median {side['median']}): image_size {result['image_size']}",
    ]
    if data["unmeasured_classes"]:
        lines.append(
            f"no {data['held_out']}/ images for {', '.join(data['unmeasured_classes'])}: "
            "their test accuracy is not measured"
        )
    if images["unreadable"]:
        lines.append(
            f"{images['unreadable']} files cannot be decoded (the spec skips them: "
            "dataset.skip_unreadable): " + ", ".join(images["unreadable_files"])
        )
    lines.append(f"wrote {result['spec']}; next: kdsearch validate {result['spec']} --data")
    return "\n".join(lines)


def _check_inputs(spec: Spec) -> None:
    """Open the data and load the teacher, so a study every worker would fail on is never
    created."""
    from kdsearch.data import datasets
    from kdsearch.training.teacher import load_teacher

    splits = datasets.load(spec.dataset)
    if spec.teacher is not None:
        load_teacher(spec, splits.num_classes)


def create_study(
    spec: SpecRef,
    storage: str | None = None,
    *,
    study_name: str | None = None,
    load_if_exists: bool = False,
) -> optuna.Study:
    """Create the Optuna study for ``spec`` (named ``study_name``, default the spec's name).

    The spec is checked, its data opened and its teacher loaded before the database is
    touched. ``load_if_exists`` reopens a study whose stored spec equals this one.
    """
    from kdsearch.results import dashboard
    from kdsearch.search import storage as storages
    from kdsearch.search import study as studies

    loaded = validate(spec)  # an impossible spec fails before the database is touched
    name = study_name or loaded.name
    studies.check_name(name)
    _check_inputs(loaded)
    url = storages.resolve_url(storage, loaded.storage)
    opened = storages.open_storage(url)
    created = studies.create(loaded, opened, name, load_if_exists)
    for arm, arm_spec in studies.arms(loaded, name)[1:]:  # the baseline arm, if asked for
        dashboard.describe(studies.load(opened, arm)[0], arm_spec)
    dashboard.describe(created, loaded)
    if loaded.search.artifact_store:
        files = {"spec.yaml": dashboard.spec_yaml(loaded).encode()}
        dashboard.attach(created, loaded.search.artifact_store, files)
    _URLS[created] = url
    return created


def _devices(devices: str | Sequence[str] | None) -> list[str]:
    from kdsearch.errors import KDSearchError
    from kdsearch.search import worker

    if not devices:
        return worker.default_devices()
    listed = devices.split(",") if isinstance(devices, str) else list(devices)
    listed = [d.strip() for d in listed]
    for d in listed:
        kind, sep, index = d.partition(":")
        if not (d in ("cpu", "cuda") or (kind == "cuda" and sep and index.isdigit())):
            raise KDSearchError(f"--devices: {d!r} is not a device (use cpu, cuda or cuda:N)")
    return listed


def run_workers(
    study: StudyRef,
    storage: str | None = None,
    *,
    n_workers: int = 1,
    devices: str | Sequence[str] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> int:
    """Run trials until the study's budget, ``n_trials`` per worker or ``timeout`` seconds.

    One worker runs in this process; more run as child processes, round-robin over
    ``devices`` (default: every GPU, else the CPU). Returns the exit code, 0 when all went
    well. Ctrl-C stops the workers after their current epoch.
    """
    from kdsearch.search import storage as storages
    from kdsearch.search import study as studies
    from kdsearch.search import worker

    _at_least("--n-workers", n_workers, 1)
    _at_least("--n-trials", n_trials, 1)
    chosen = _devices(devices)
    name, url = _where(study, storage)
    url = storages.resolve_url(url)
    # Fail fast, here, on an unreachable database or an unknown study.
    checked = storages.open_storage(url, existing=True)
    studies.check_files_safe(studies.load(checked, name)[0])
    storages.close(checked)
    if n_workers > 1:
        code = worker.spawn(name, url, n_workers, chosen, n_trials, timeout)
    else:
        # This process is the worker; worker.run gives the caller's signal handlers back.
        worker.configure_logging(0)
        code = worker.run(name, 0, chosen[0], n_trials, timeout, url)
    _describe_arms(name, url)
    return code


def _describe_arms(name: str, url: str) -> None:
    """After workers of a study with a tuned baseline arm: the dashboard note states the gain
    as the trials left it."""
    from kdsearch.results import dashboard
    from kdsearch.search import study as studies

    opened, spec = studies.open_study(name, url)
    if spec.search.baseline:
        dashboard.describe(opened, spec)


def study_status(storage: str | None = None, study: StudyRef | None = None) -> list[dict[str, Any]]:
    """One dict per study (or just ``study``): trials by state, best, live workers, time left,
    and its Slurm array tasks still pending or running (``slurm_jobs``; empty without Slurm).

    The keys are those of ``kdsearch status --json`` (README).
    """
    import optuna

    from kdsearch.launch import slurm
    from kdsearch.results import status as statuses
    from kdsearch.search import storage as storages

    name, url = _where(study, storage) if study is not None else (None, storage)
    opened = storages.open_storage(storages.resolve_url(url))
    rows = statuses.all_statuses(opened, name)
    submitted = {
        s.study_name
        for s in optuna.get_all_study_summaries(opened, include_best_trial=False)
        if slurm.JOBS_ATTR in s.user_attrs
    }
    return [
        {**row, "slurm_jobs": slurm.jobs(row["study"]) if row["study"] in submitted else []}
        for row in rows
    ]


def _job_storage(
    storage: str | None, storage_file: str | Path | None
) -> tuple[str, dict[str, Any]]:
    """The URL a Slurm job's workers use, and how the job gets it: a password-free URL as
    ``--storage``, else the path of the file holding it; a URL with a password is refused."""
    import os

    from kdsearch.errors import KDSearchError
    from kdsearch.redact import mask_url
    from kdsearch.search import storage as storages
    from kdsearch.search import storage_file as url_files

    if storage_file is None and not storage and not os.environ.get(storages.ENV):
        storage_file = os.environ.get(url_files.ENV)
    if storage_file:
        path = Path(storage_file).expanduser().resolve()
        return url_files.read(path), {"storage_file": path}
    url = storages.resolve_url(storage)
    if mask_url(url) != url:
        raise KDSearchError(
            f"submit: the storage URL {mask_url(url)} holds a password, which Slurm would keep "
            "with the job; put the URL in a file only you can read (chmod 600) and pass "
            f"--storage-file FILE (or ${url_files.ENV}), or leave the password out of the URL "
            "and keep it in ~/.pgpass"
        )
    return url, {"storage": url}


def submit(
    study: str,
    storage: str | None = None,
    *,
    tasks: int,
    time: str = "4:00:00",
    gpus_per_task: int = 0,
    cpus_per_task: int = 1,
    partition: str | None = None,
    account: str | None = None,
    sbatch_args: Sequence[str] = (),
    storage_file: str | Path | None = None,
    output_dir: str | Path | None = None,
    signal_seconds: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Submit ``tasks`` workers of ``study`` as one Slurm job array; each task is one worker on
    the GPUs Slurm gives it (``gpus_per_task``; CPU when 0).

    Returns the job's id (None on a dry run), its name, the script and where the tasks'
    output goes (default: the study's folder, ``slurm/``). Nothing is submitted or written
    unless sbatch exists, the study exists in a reachable storage, and no password would be
    kept by Slurm (see :func:`kdsearch.launch.slurm.script`).
    """
    import os
    import sys

    from kdsearch.errors import KDSearchError
    from kdsearch.launch import slurm
    from kdsearch.paths import home
    from kdsearch.search import study as studies

    _at_least("--tasks", tasks, 1)
    _at_least("--gpus-per-task", gpus_per_task, 0)
    _at_least("--cpus-per-task", cpus_per_task, 1)
    _at_least("--signal-seconds", signal_seconds, 1)
    if not dry_run:
        slurm.require_sbatch()
    url, how = _job_storage(storage, storage_file)
    found, _ = studies.open_study(study, url)
    out = Path(output_dir) if output_dir else studies.folder(found) / "slurm"
    options = slurm.JobOptions(
        study=study,
        tasks=tasks,
        time=time,
        python=sys.executable,
        workdir=Path.cwd(),
        home=home().resolve(),
        output_dir=out.expanduser().resolve(),
        path=os.environ.get("PATH", "/usr/bin:/bin"),
        pgpassfile=os.environ.get("PGPASSFILE"),
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        partition=partition,
        account=account,
        signal_seconds=signal_seconds or slurm.SIGNAL_SECONDS,
        sbatch_args=tuple(sbatch_args),
        **how,
    )
    text = slurm.script(options)
    result = {
        "job_id": None,
        "job_name": slurm.job_name(study),
        "output_dir": str(options.output_dir),
        "script": text,
    }
    if dry_run:
        return result
    made = not options.output_dir.exists()
    options.output_dir.mkdir(parents=True, exist_ok=True)  # sbatch opens no missing folder
    try:
        result["job_id"] = job_id = slurm.submit(text)
    except KDSearchError:
        if made:
            options.output_dir.rmdir()
        raise
    (options.output_dir / f"{job_id}.sh").write_text(text)
    found.set_user_attr(slurm.JOBS_ATTR, [*found.user_attrs.get(slurm.JOBS_ATTR, []), job_id])
    return result


def extend_study(study: StudyRef, n_trials: int, storage: str | None = None) -> int:
    """Raise the study's trial budget to ``n_trials``; returns the old budget."""
    from kdsearch.search import storage as storages
    from kdsearch.search import study as studies

    name, url = _where(study, storage)
    return studies.extend(storages.open_storage(storages.resolve_url(url)), name, n_trials)


def confirm_study(
    study: StudyRef,
    storage: str | None = None,
    *,
    top: int | None = None,
    seeds: int | None = None,
    budgets: Mapping[str, float] | None = None,
) -> list[tuple[int, int]]:
    """Queue confirmation trials: the ``top`` best configurations (with several objectives,
    the most accurate Pareto members within ``budgets``) again with ``seeds`` new seeds each.

    Defaults: the spec's ``search.confirm``, else 3 and 3. Workers run the queued trials
    (``run_workers``); returns the (trial, seed) pairs queued now.
    """
    from kdsearch.search import confirm
    from kdsearch.search import study as studies

    name, url = _where(study, storage)
    opened, spec = studies.open_study(name, url)
    default = spec.search.confirm
    top = top if top is not None else (default.top if default else 3)
    seeds = seeds if seeds is not None else (default.seeds if default else 3)
    return confirm.enqueue(opened, spec, top, seeds, budgets)


def delete_study(
    study: StudyRef,
    storage: str | None = None,
    *,
    ask: Callable[[str], bool] | None = None,
) -> Path | bool | None:
    """Delete the study, its checkpoints and logs; returns its folder (None if it had none).

    ``ask``, given, hears the question (which names the study and its storage, the password
    masked) once the study is known to exist, and nothing is deleted unless it answers True;
    the answer False is returned then.
    """
    from kdsearch.search import storage as storages
    from kdsearch.search import study as studies

    name, url = _where(study, storage)
    url = storages.resolve_url(url)
    opened = storages.open_storage(url, existing=True)
    # An unknown study, or one whose name or id is unsafe as a folder, fails before the question.
    studies.check_files_safe(studies.load(opened, name)[0])
    arm = studies.load(opened, name)[0].user_attrs.get(studies.BASELINE_STUDY_ATTR)
    what = f"{name} and its baseline arm {arm}, and their" if arm else f"{name} and its"
    question = f"delete study {what} checkpoints in {storages.mask(url)}?"
    if ask is not None and not ask(question):
        return False
    return studies.delete(opened, name)


def trials_table(
    study: StudyRef,
    storage: str | None = None,
    *,
    state: str = "all",
    top: int | None = None,
    columns: Sequence[str] | None = None,
    pivot: tuple[str, str] | None = None,
    bins: int = 4,
    pareto: bool = False,
    by: str = "auto",
) -> pd.DataFrame:
    """The study's trials, best first, as ``export-table`` shows them (empty if none).

    ``state``: ``complete``, ``pruned`` or ``all``; ``top``: only the best K; ``columns``:
    only these; ``pivot=(row, col)``: the best value per cell over two parameters, a
    continuous one cut into ``bins`` quantile ranges; ``pareto``: only the non-dominated
    trials (for several objectives), objective columns first; ``by``: ``trial``, or
    ``configuration`` for one row per configuration with its mean over seeds and tie mark
    (``auto``: per configuration once the study has confirmation trials). ``df.attrs
    ["confidence"]`` holds the study's noise sentence.
    """
    from kdsearch.results import export

    name, url = _where(study, storage)
    wanted = list(columns) if columns else None
    return export.table(
        name,
        url,
        state=state,
        top=top,
        columns=wanted,
        pivot=pivot,
        bins=bins,
        pareto=pareto,
        by=by,
    )


def compare_studies(studies: Sequence[StudyRef], storage: str | None = None) -> pd.DataFrame:
    """One row per study: best validation accuracy, its test accuracy, student size."""
    from kdsearch.results import export

    found = [_where(s, storage) for s in studies]
    return export.compare_table([n for n, _ in found], found[0][1] if found else storage)


def evaluate_best(
    study: StudyRef,
    storage: str | None = None,
    *,
    retrain: bool = False,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: bool = False,
    budgets: Mapping[str, float] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Test accuracy of the best trial (keys as ``kdsearch best --json``), stored on the study.

    ``budgets`` (e.g. ``{"student_params": 1e5}``; also ``flops``, ``latency_ms``) picks the
    most accurate trial costing at most these, from the Pareto front of a cost search.

    The trial's own checkpoint by default; ``retrain`` retrains its parameters on train+val
    for each of ``seeds``; ``baseline`` also trains the alpha = 0 student once.
    """
    from kdsearch.results import best

    name, url = _where(study, storage)
    return best.evaluate_best(
        name, url, retrain=retrain, seeds=seeds, baseline=baseline, budgets=budgets, device=device
    )


def write_report(
    study: StudyRef,
    storage: str | None = None,
    *,
    out: str | Path | None = None,
    baseline: bool = True,
    device: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Write figures and report.md for the study to ``out`` (default: reports/<study>);
    returns the path of report.md. ``baseline`` trains the alpha = 0 baseline once; ``say``
    (e.g. ``print``) hears of the baseline's training and of each file written and attached."""
    from kdsearch.results import report as reports

    name, url = _where(study, storage)
    folder = Path(out) if out is not None else None
    paths, _ = reports.make_report(
        name, url, out=folder, baseline=baseline, device=device, say=say or (lambda _: None)
    )
    return paths[-1]


def cache_teacher(
    spec: SpecRef | None = None,
    study: StudyRef | None = None,
    storage: str | None = None,
    device: str | None = None,
) -> tuple[Path, tuple[int, ...]]:
    """Build (or find) the teacher's logit cache of a spec, or of a study's stored spec, so
    that workers starting later share it; returns its path and the logits' shape."""
    from kdsearch.errors import KDSearchError
    from kdsearch.search import study as studies
    from kdsearch.training.experiment import Context
    from kdsearch.training.teacher import build_or_load, load_teacher

    if study is not None:
        name, url = _where(study, storage)
        _, loaded = studies.open_study(name, url)
    elif spec is not None:
        loaded = _spec(spec)
    else:
        raise KDSearchError("cache-teacher: give a SPEC or --study NAME")
    ctx = Context.load(loaded, device, with_teacher=False)
    model = load_teacher(loaded, ctx.num_classes).to(ctx.device)
    cached, path = build_or_load(model, ctx.data, loaded)
    return Path(path), tuple(cached.table.shape)


def _train(spec: Spec, out: Path, device: str | None, init: Path | None = None) -> dict[str, Any]:
    """Train to ``out``, writing it only when finished; an interrupted run keeps its state
    beside ``out`` and the same call resumes it (:mod:`kdsearch.training.resumable`). A
    baseline (alpha 0) loads no teacher and builds no cache."""
    from kdsearch.training.experiment import Context
    from kdsearch.training.resumable import train_to

    ctx = Context.load(spec, device, with_teacher=spec.distills)
    outcome = train_to(ctx, spec, out, init)
    return {
        "checkpoint": str(out),
        "val_accuracy": outcome.val_accuracy,
        "test_accuracy": outcome.test_accuracy,
        "best_epoch": outcome.history.best_epoch + 1,
        "parameters": outcome.parameters,
        "train_seconds": round(outcome.history.train_seconds, 2),
        "images_per_second": round(outcome.history.images_per_second, 1),
    }


def train_teacher(
    spec: SpecRef,
    out: str | Path | None = None,
    *,
    force: bool = False,
    device: str | None = None,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train the spec's teacher to ``out`` (default: its ``teacher.checkpoint``); with
    ``init``, fine-tune it from that checkpoint (same arch; its input normalization is kept,
    and its head is replaced if it was trained on another class count).

    An existing file there is refused before any training unless ``force``: studies and
    teacher caches were built on it, and replacing it would silently change what they
    compare against.
    """
    from kdsearch.errors import KDSearchError
    from kdsearch.paths import resolve

    loaded = _spec(spec)
    teacher_spec = loaded.teacher_spec()
    assert loaded.teacher is not None  # teacher_spec() refuses a spec without one
    default = loaded.teacher.checkpoint or f"models/{loaded.name}-teacher.pt"
    path = Path(out) if out else resolve(default)
    if path.exists() and not force:
        raise KDSearchError(
            f"{path} already holds a teacher (studies and teacher caches may be built on it); "
            "pass --force to replace it, or --out to write another file"
        )
    return _train(teacher_spec, path, device, Path(init) if init else None)


def train_student(
    spec: SpecRef,
    out: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train one student with the spec's fixed hyperparameters (``overrides`` applied) to
    ``out`` (default: models/<name>-student.pt); returns its accuracies and size."""
    from kdsearch.paths import resolve

    loaded = _spec(spec, overrides)
    path = Path(out) if out else resolve(f"models/{loaded.name}-student.pt")
    return _train(loaded, path, device)


def evaluate_checkpoint(
    checkpoint: str | Path, spec: str | None = None, *, device: str | None = None
) -> dict[str, Any]:
    """Test accuracy, per-class accuracy, confusion matrix and size of a checkpoint, on the
    test set of its own data set (or of ``spec``'s)."""
    from kdsearch.results import evaluate

    return evaluate.evaluate_checkpoint(Path(checkpoint), spec, device)


def export_model(
    checkpoint: str | Path | None = None,
    *,
    study: StudyRef | None = None,
    storage: str | None = None,
    format: str = "onnx",
    out: str | Path | None = None,
    images: Sequence[str | Path] = (),
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Export a checkpoint (or, with ``study``, the study's best trial's) to ONNX or
    TorchScript, its preprocessing and class names inside the file, checked against the
    checkpoint on ``images`` (else random pixels); returns what was written and measured.
    ``out`` defaults to the checkpoint's name (the study's) with .onnx / .ts, here."""
    from kdsearch.deploy import export
    from kdsearch.errors import KDSearchError

    if (checkpoint is None) == (study is None):
        raise KDSearchError("export-model: give a CHECKPOINT or --study NAME (one of them)")
    if checkpoint is None:
        assert study is not None  # one of the two, checked above
        checkpoint, stem = _best_checkpoint(study, storage)
    else:
        stem = Path(checkpoint).stem
    suffix = export.FORMATS.get(format, "")
    target = Path(out) if out is not None else Path(f"{stem}{suffix}")
    return export.export(
        Path(checkpoint),
        format,
        target,
        [Path(p) for p in images],
        export.TOLERANCE if tolerance is None else tolerance,
    )


def _best_checkpoint(study: StudyRef, storage: str | None) -> tuple[Path, str]:
    """The checkpoint of the study's best trial (by confirmed mean where confirmed), and the
    name an export of it gets."""
    from kdsearch.errors import KDSearchError
    from kdsearch.results import best
    from kdsearch.search import study as studies

    name, url = _where(study, storage)
    opened, _ = studies.open_study(name, url)
    trial = best.best_trial(opened)
    path = trial.user_attrs.get("checkpoint")
    if not path or not Path(path).is_file():
        raise KDSearchError(
            f"export-model: the best trial ({trial.number}) of study {name!r} kept no "
            f"checkpoint; retrain it with `kdsearch best --study {name} --retrain` and "
            "export that checkpoint"
        )
    return Path(path), f"{name}-trial{trial.number}"


def load_student(path: str | Path) -> Any:
    """A student from a kdsearch checkpoint or an ONNX / TorchScript export: ``(model,
    transform, classes, meta)``; ``model(transform(image).unsqueeze(0))`` gives logits."""
    from kdsearch.deploy.student import load_student as load

    return load(path)


def predict(
    model: str | Path, images: Sequence[str | Path], *, top_k: int = 5
) -> list[dict[str, Any]]:
    """The ``top_k`` classes (name, index, probability) of each image file, by the student in
    ``model`` (a checkpoint or an export), with its own preprocessing."""
    from kdsearch.deploy import predict as predicting
    from kdsearch.deploy.student import load_student as load
    from kdsearch.errors import KDSearchError

    _at_least("--top-k", top_k, 1)
    files = [Path(p) for p in images]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise KDSearchError(f"predict: no such image file {', '.join(missing[:3])}")
    return predicting.predict(load(model), files, top_k)


def benchmark_search(
    spec: SpecRef,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    budget_fraction: float = 0.5,
    storage: str | None = None,
    jobs: int = 1,
    confirm_seeds: int = 0,
    grid: str | None = None,
) -> Any:
    """The spec's grid run to the end against a kdsearch search (TPE + Hyperband) per seed on
    the same data, in epochs (:mod:`kdsearch.benchmarks.search_efficiency`); returns its
    result table.

    The studies go to ``storage`` (default: a temporary SQLite file, removed afterwards).
    ``jobs`` studies' workers run at once, in processes that share the CPU threads. ``grid``
    names a finished grid study of this spec in ``storage`` to compare against instead of
    running the grid again. With ``confirm_seeds`` > 0, each run's winner is trained again
    with that many new seeds and its mean test accuracy reported.
    """
    import tempfile

    from kdsearch.benchmarks import search_efficiency
    from kdsearch.errors import KDSearchError

    _at_least("--jobs", jobs, 1)  # before the data and teacher load
    _at_least("--confirm-seeds", confirm_seeds, 0)
    if grid is not None and storage is None:
        raise KDSearchError(f"--grid {grid}: names a study in --storage; pass --storage")
    loaded = validate(spec)
    search_efficiency.grid_spec(loaded)  # refuse a spec that is not a grid before anything runs
    _check_inputs(loaded)  # the data and the teacher load, or one line says why
    with tempfile.TemporaryDirectory() as tmp:
        url = storage or f"sqlite:///{tmp}/bench-search.db"
        return search_efficiency.bench(
            loaded, list(seeds), budget_fraction, url, jobs, confirm_seeds, grid
        )


#: The most library models ``nets PATTERN`` builds: each is built to be counted.
MAX_LISTED = 40


def list_nets(
    num_classes: int = 10, pattern: str | None = None, image_size: int = 32
) -> list[dict[str, Any]]:
    """Networks with their parameters, MFLOPs per ``image_size``² image and keyword arguments,
    each built for ``num_classes`` outputs: the zoo's, or those whose names match
    ``pattern`` (shell-style: ``timm:mobilenet*``, ``torchvision:resnet*``, ``resnet*``)."""
    import fnmatch

    from kdsearch import nets
    from kdsearch.errors import KDSearchError
    from kdsearch.nets import library

    _at_least("--image-size", image_size, 8)
    if pattern is not None and library.is_library(pattern):
        archs = library.matching(pattern)
    else:
        archs = [a for a in nets.names() if pattern is None or fnmatch.fnmatchcase(a, pattern)]
    if not archs:
        raise KDSearchError(
            f"nets: no network matches {pattern!r}; try timm:NAME*, torchvision:NAME* or a "
            "zoo name (kdsearch nets lists the zoo)"
        )
    if len(archs) > MAX_LISTED:
        raise KDSearchError(
            f"nets: {len(archs)} networks match {pattern!r} ({', '.join(archs[:3])}, ...); "
            f"narrow the pattern to at most {MAX_LISTED} (each is built to be counted)"
        )
    rows = []
    for arch in archs:
        model = nets.create(arch, num_classes=num_classes)
        rows.append(
            {
                "arch": arch,
                "parameters": nets.count_parameters(model),
                "mflops": round(nets.forward_flops(model, image_size) / 1e6, 1),
                "image_size": image_size,
                "kwargs": nets.kwarg_names(arch),
            }
        )
    return rows


def import_checkpoint(
    path: str | Path,
    arch: str,
    out: str | Path,
    *,
    num_classes: int = 10,
    kwargs: Mapping[str, Any] | None = None,
    normalization: str | None = None,
) -> str:
    """Convert a reference (or torchvision/timm) state dict at ``path`` into a kdsearch
    checkpoint at ``out``; returns the input normalization recorded in it (default: the
    architecture's own convention)."""
    from kdsearch.training import model_files

    norm = normalization or model_files.default_normalization(arch)
    model_files.import_reference(Path(path), arch, Path(out), num_classes, dict(kwargs or {}), norm)
    return norm


def _check_port(host: str, port: int) -> None:
    """Bind once before serving: a busy or impossible port is one line, not a server crash."""
    import socket

    from kdsearch.errors import KDSearchError

    if not 0 < port < 65536:
        raise KDSearchError(f"--port {port}: not a TCP port (use 1-65535)")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise KDSearchError(
            f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); "
            "pick another --port"
        ) from None


def serve_dashboard(
    storage: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifact_store: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Serve optuna-dashboard for the storage until interrupted, with the artifact store the
    studies' specs name (or ``artifact_store``) so report figures show; ``say`` hears a
    warning if the address is exposed, then where it serves (the password masked)."""
    import optuna_dashboard

    from kdsearch.results import dashboard
    from kdsearch.search import storage as storages

    _check_port(host, port)
    url = storages.resolve_url(storage)
    opened = storages.open_storage(url, existing=True)
    exposure = dashboard.exposure_warning(host)
    if exposure:
        say(f"warning: {exposure}")
    location = artifact_store or dashboard.artifact_location(opened)
    files = f", artifacts in {location}" if location else ""
    say(f"optuna-dashboard on http://{host}:{port}/dashboard for {storages.mask(url)}{files}")
    optuna_dashboard.run_server(
        opened, host=host, port=port, artifact_store=dashboard.artifact_store(location)
    )


def serve_storage_proxy(
    storage: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 13000,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the storage through Optuna's gRPC proxy until interrupted (for very many
    workers: one database connection pool instead of one per worker)."""
    import warnings

    import optuna

    from kdsearch.search import storage as storages

    url = storages.resolve_url(storage)
    opened = storages.open_storage(url)
    say(f"gRPC storage proxy on {host}:{port} for {storages.mask(url)}")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.storages.run_grpc_proxy_server(opened, host=host, port=port)


def benchmark_loop(device: str = "cpu", images: int | None = None) -> dict[str, Any]:
    """A reference-style KD loop timed against kdsearch's on synthetic images
    (:mod:`kdsearch.benchmarks.loop_speed`); returns its figures (keys as ``kdsearch bench
    --json``)."""
    from kdsearch.benchmarks import loop_speed

    return loop_speed.run(device, images)


# --- text: what the command line prints, for scripts that print the same -----------------


def storage_url(storage: str | None = None, spec: SpecRef | None = None) -> str:
    """The database URL a command uses: ``storage``, else $KDSEARCH_STORAGE, else the spec's,
    else sqlite:///kdsearch.db."""
    from kdsearch.search import storage as storages

    return storages.resolve_url(storage, _spec(spec).storage if spec is not None else None)


def masked(url: str) -> str:
    """The URL with its password replaced by ``***``: the only form kdsearch ever shows."""
    from kdsearch.search import storage as storages

    return storages.mask(url)


def parse_seeds(text: str) -> list[int]:
    """A comma list of seeds (``0,1,2``), or one line saying what is wrong with it."""
    from kdsearch.results import best

    return best.parse_seeds(text)


def status_text(row: Mapping[str, Any]) -> str:
    """One study's :func:`study_status` row as ``kdsearch status`` prints it."""
    from kdsearch.results import status

    return status.format_status(dict(row))


def export_text(result: Mapping[str, Any]) -> str:
    """What ``export-model`` prints: where, what was checked, and the two latencies."""
    lat = result["latency_ms_b1"]
    fmt = result["format"]
    return (
        f"wrote {result['path']} ({fmt}, {result['bytes'] / 1e6:.2f} MB, "
        f"{len(result['classes'])} classes, input {result['preprocess']['image_size']} px)\n"
        f"checked on {result['checked_on']}: max |logit difference| "
        f"{result['max_abs_diff']:.2e} on logits up to {result['max_abs_logit']:.3g} "
        f"(tolerance {result['tolerance']:g}, absolute and relative)\n"
        f"latency, batch 1 on this CPU: checkpoint {lat['checkpoint']:.3f} ms, "
        f"{fmt} {lat[fmt]:.3f} ms"
    )


def predict_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """What ``predict`` prints: one line per image, its top classes and probabilities."""
    from kdsearch.deploy import predict as predicting

    return predicting.text(rows)


def best_text(result: Mapping[str, Any]) -> str:
    """:func:`evaluate_best`'s result as ``kdsearch best`` prints it."""
    from kdsearch.results import best

    return best.format_result(dict(result))


def evaluation_text(result: Mapping[str, Any]) -> str:
    """:func:`evaluate_checkpoint`'s result as ``kdsearch evaluate`` prints it."""
    from kdsearch.results import evaluate

    return evaluate.format_report(dict(result))


def table_text(df: pd.DataFrame, fmt: str | None = None) -> str:
    """A table (:func:`trials_table`, :func:`compare_studies`) as markdown, csv, json or latex."""
    from kdsearch.results import export

    return export.render(df, fmt)


def write_table(df: pd.DataFrame, output: str | Path, fmt: str | None = None) -> None:
    """Write a table to ``output``, its format from ``fmt`` or the file's suffix."""
    from kdsearch.results import export

    export.write(df, str(output), fmt)


def loop_benchmark_text(result: Mapping[str, Any]) -> str:
    """:func:`benchmark_loop`'s result as ``kdsearch bench`` prints it."""
    from kdsearch.benchmarks import loop_speed

    return loop_speed.format_table(dict(result))


def search_benchmark_text(result: Any) -> str:
    """:func:`benchmark_search`'s result as ``kdsearch bench-search`` prints it."""
    from kdsearch.benchmarks import search_efficiency

    return search_efficiency.format_table(result)
