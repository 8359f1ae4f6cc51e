"""A study's lifecycle: made from a spec (samplers, pruners, the spec stored on it), loaded,
extended, its checkpoints pruned to the best, deleted with its files.

``create-study`` validates the spec once and stores it on the study (user attribute
``kdsearch_spec``), so a worker on any machine needs only the storage URL and the study name.
Samplers and pruners are Optuna's own, named in the spec with Optuna's argument names.

Each study also gets a random id at creation (user attribute ``kdsearch_study_id``), and every
file of the study lives under ``models/studies/<name>-<id>/`` (:func:`folder`): a study deleted
and created again, or one of the same name on another database, never finds the other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from kdsearch.config import spec as specs
from kdsearch.config.spec import ParamSpec, Spec
from kdsearch.errors import KDSearchError, unknown_name
from kdsearch.paths import models_dir
from kdsearch.search import storage as storages

SPEC_ATTR = "kdsearch_spec"
VERSION_ATTR = "kdsearch_spec_version"
ID_ATTR = "kdsearch_study_id"
#: A study whose budget is epochs, not trials (a ``bench-search`` search): the epochs it may
#: train in all. Its ``search.n_trials`` then only caps the trials, and status reads this.
EPOCH_BUDGET_ATTR = "kdsearch_epoch_budget"
#: On a study made with ``search.baseline``: the name of its sibling, the tuned baseline arm.
BASELINE_STUDY_ATTR = "kdsearch_baseline_study"
#: On that sibling: the distilled study it is the baseline of.
BASELINE_OF_ATTR = "kdsearch_baseline_of"


def study_id(study: Any) -> str | None:
    """The id ``create-study`` gave the study; None for a study created before ids existed."""
    return study.user_attrs.get(ID_ATTR)


def folder(study: Any) -> Path:
    """Where a study's files live: trial checkpoints, TensorBoard runs, final retrains.

    The one place a path is derived from a study, so the one place its name and stored id are
    checked (:func:`check_files_safe`): a study made by other tools (plain Optuna, a copy of
    its attributes) gets no path outside ``models/studies/``. A study created before ids
    existed keeps its old folder, ``models/studies/<name>``, so its recorded checkpoints stay
    valid; such a study shares that folder with any other study of its name.
    """
    check_files_safe(study)
    sid = study_id(study)
    root = models_dir() / "studies"
    path = root / (f"{study.study_name}-{sid}" if sid else study.study_name)
    if path.is_symlink() or path.resolve().parent != root.resolve():
        raise KDSearchError(
            f"study {study.study_name!r}: its folder {path} leads outside {root}; "
            "remove that link, kdsearch will not write or delete through it"
        )
    return path


def inside(path: str | Path, root: Path) -> bool:
    """Whether ``path`` resolves to a place strictly inside ``root`` (links followed): the test
    before deleting a path read from a study (a trial's recorded checkpoint)."""
    resolved, top = Path(path).resolve(), root.resolve()
    return resolved != top and top in resolved.parents


def _samplers() -> dict[str, Any]:
    import optuna.samplers as s

    return {
        "tpe": s.TPESampler,
        "random": s.RandomSampler,
        "grid": s.GridSampler,
        "cmaes": s.CmaEsSampler,
        "nsga2": s.NSGAIISampler,
    }


def _pruners() -> dict[str, Any]:
    import optuna.pruners as p

    return {
        "hyperband": p.HyperbandPruner,
        "median": p.MedianPruner,
        "successive_halving": p.SuccessiveHalvingPruner,
        "percentile": p.PercentilePruner,
        "none": p.NopPruner,
    }


def grid_values(name: str, param: ParamSpec) -> list[Any]:
    """The values a grid search visits for one parameter: its choices, or low..high by step."""
    if param.type == "categorical":
        return list(param.choices or [])
    if param.step is None:
        raise KDSearchError(
            f"search.space.{name}: the grid sampler needs choices or a step for every parameter"
        )
    assert param.low is not None and param.high is not None  # ParamSpec.check requires both
    count = round((param.high - param.low) / param.step) + 1
    values = [param.low + i * param.step for i in range(count)]
    return [int(v) for v in values] if param.type == "int" else [round(v, 12) for v in values]


def worker_seed(spec: Spec, index: int, salt: str | None = None) -> int:
    """A sampler seed per worker, so parallel workers do not propose the same trials.

    Derived from the spec's seed, the worker's index and ``salt``. The default salt is the host
    name and process id, so that workers started by separate commands, on one machine or many,
    differ too. A fixed salt makes the seed a function of spec and index alone: a benchmark that
    runs its workers one after another (kdsearch.benchmarks.search_efficiency) is then repeatable.
    """
    base = spec.search.sampler.get("seed", spec.train.seed)
    if salt is None:
        salt = f"{socket.gethostname()}/{os.getpid()}"
    text = f"{base}/{index}/{salt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def make_sampler(spec: Spec, seed: int | None = None) -> Any:
    options = dict(spec.search.sampler)
    name = options.pop("name")
    options.pop("seed", None)
    samplers = _samplers()
    if name not in samplers:
        raise unknown_name("search.sampler.name", name, samplers)
    if name == "grid":
        options["search_space"] = {k: grid_values(k, p) for k, p in spec.search.space.items()}
        # Optuna shuffles the grid by seed and records points by index: every worker must
        # shuffle alike, or two workers repeat one point and skip another.
        options["seed"] = spec.search.sampler.get("seed", spec.train.seed)
    else:
        options["seed"] = seed
    try:
        return samplers[name](**options)
    except TypeError as err:
        raise KDSearchError(f"search.sampler: {err} (Optuna's argument names apply)") from None


def hyperband_min_resource(epochs: int) -> int:
    """Hyperband's first rung when the spec names none: a third of the epochs, not Optuna's 1.

    In distillation the best settings start slowest: on the CIFAR-10 5% subset grid (45 alpha x
    T points, 50 epochs) a point's accuracy after epoch 1 ranks the points *against* their final
    accuracy (Spearman -0.84), and only from about epoch 20 on with it (+0.88). Rungs after
    epochs 2, 4 and 10 (Optuna's min_resource 1) prune the best points first. Replayed on that
    grid's curves, searches with the first rung at a third of the epochs reached the grid's
    best in 31 of 50 seeds, with Optuna's 1 in 11; run live, the median of three seeds reached
    it after 10% of the grid's epochs (bench/replay_search.py, bench/SEARCH.md).
    """
    return max(1, epochs // 3)


def make_pruner(spec: Spec) -> Any:
    options = dict(spec.search.pruner)
    name = options.pop("name")
    pruners = _pruners()
    if name not in pruners:
        raise unknown_name("search.pruner.name", name, pruners)
    if name == "hyperband":
        options.setdefault("max_resource", spec.train.epochs)
        options.setdefault("min_resource", hyperband_min_resource(spec.train.epochs))
    try:
        return pruners[name](**options)
    except (TypeError, ValueError) as err:
        raise KDSearchError(f"search.pruner: {err} (Optuna's argument names apply)") from None


def check(spec: Spec) -> None:
    """Refuse a spec whose trials could never produce a value (``validate``, ``create-study``).

    Such a study would not fail once: a failed trial does not count toward the budget, so
    workers would train and fail trial after trial. Settings a plain ``train`` may use (no
    validation split: keep the last epoch) are impossible for a search, which ranks by it.
    """
    make_sampler(spec)
    make_pruner(spec)
    if spec.dataset.val_fraction == 0:
        raise KDSearchError(
            "dataset.val_fraction: 0 leaves no validation images, and a search ranks trials "
            "by validation accuracy; set it above 0, e.g. 0.1"
        )


def spec_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two stored specs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, path = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


#: Longest study name: it becomes one path component (``<name>-<id>``), well under 255 bytes.
MAX_NAME = 120
#: What a study name (and a stored id) may be: one path component on every file system, and
#: one a shell or a URL needs no quoting for.
_SAFE_CHAR = re.compile(r"[A-Za-z0-9._-]")
ALLOWED = "letters, digits, '-', '_' or '.', not starting with '.'"


def unsafe(name: object) -> str | None:
    """Why ``name`` cannot name a folder, or None when it can."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not text"
    if not name:
        return "is empty"
    if len(name.encode()) > MAX_NAME:
        return f"is {len(name.encode())} bytes long (at most {MAX_NAME})"
    if name.startswith("."):
        return "starts with '.'"
    bad = next((c for c in name if not _SAFE_CHAR.fullmatch(c)), None)
    return f"contains {bad!r}" if bad is not None else None


def check_name(name: str) -> None:
    """Refuse a new study name that is not safe as one path component of its folder."""
    reason = unsafe(name)
    if reason:
        raise KDSearchError(
            f"study name {name!r} {reason}: it names the study's folder, so use {ALLOWED} "
            "(--study-name, or the spec's name)"
        )


def check_files_safe(study: Any) -> None:
    """Refuse to derive a path from a study whose name or stored id is unsafe: one made by
    other tools (plain Optuna, ``bench/study_json.py``) skipped :func:`check_name`, and anyone
    who can write to a shared storage can make such a study."""
    name, sid = study.study_name, study_id(study)
    for what, value in (("name", name), (f"stored {ID_ATTR}", sid)):
        reason = None if what != "name" and value is None else unsafe(value)
        if reason:
            raise KDSearchError(
                f"study {name!r}: its {what} {value!r} {reason}, so kdsearch will not make it "
                f"a folder (it was not made by create-study); copy it to a name of {ALLOWED} "
                "with optuna.copy_study, delete this one with optuna.delete_study, and give "
                f"the copy's {ID_ATTR} 8 hex digits"
            )


def baseline_name(name: str) -> str:
    """The name of study ``name``'s tuned baseline arm."""
    return f"{name}-baseline"


def arms(spec: Spec, name: str) -> list[tuple[str, Spec]]:
    """The studies ``create-study`` makes for ``spec`` under ``name``: the study, and with
    ``search.baseline`` its baseline arm (:meth:`Spec.baseline_spec`)."""
    if not spec.search.baseline:
        return [(name, spec)]
    return [(name, spec), (baseline_name(name), spec.baseline_spec())]


def create(spec: Spec, storage: Any, name: str, load_if_exists: bool) -> Any:
    """Create (or with ``load_if_exists``, reopen identical) studies for ``spec``: the study,
    and its baseline arm with ``search.baseline``, the two linked by user attributes. Every
    arm is checked before any is created, so a refusal leaves the storage as it was."""
    import optuna

    made = arms(spec, name)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    for arm, _ in made:
        check_name(arm)
    reopened = {
        arm: _reopen(arm_spec, storage, arm, load_if_exists)
        for arm, arm_spec in made
        if arm in existing
    }
    studies = [reopened.get(arm) or _create_one(arm_spec, storage, arm) for arm, arm_spec in made]
    if len(studies) == 2:
        studies[0].set_user_attr(BASELINE_STUDY_ATTR, made[1][0])
        studies[1].set_user_attr(BASELINE_OF_ATTR, name)
    return studies[0]


def _reopen(spec: Spec, storage: Any, name: str, load_if_exists: bool) -> Any:
    """Existing study ``name``, if ``load_if_exists`` and its stored spec is ``spec``."""
    import optuna

    stored = json.loads(json.dumps(spec.public_dict()))
    if not load_if_exists:
        raise KDSearchError(
            f"study {name!r} already exists; pass --load-if-exists to reuse it, "
            "or --study-name to create another"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    diff = spec_diff(study.user_attrs.get(SPEC_ATTR, {}), stored)
    if diff and all(d.startswith("search.n_trials:") for d in diff):
        raise KDSearchError(
            f"study {name!r} exists with a different budget ({diff[0]}); raise it with "
            f"`kdsearch extend --study {name} --n-trials {spec.search.n_trials}`"
        )
    if diff:
        raise KDSearchError(
            f"study {name!r} exists with a different spec ({'; '.join(diff[:3])}); "
            "create a new study or restore the spec"
        )
    return study


def _create_one(spec: Spec, storage: Any, name: str) -> Any:
    """A new study ``name`` for ``spec``, the spec and a fresh id stored on it."""
    import optuna

    pruner = make_pruner(spec)
    stored = json.loads(json.dumps(spec.public_dict()))
    study = optuna.create_study(
        storage=storage, study_name=name, directions=spec.search.directions, pruner=pruner
    )
    study.set_user_attr(SPEC_ATTR, stored)
    study.set_user_attr(VERSION_ATTR, specs.SPEC_VERSION)
    study.set_user_attr(ID_ATTR, uuid.uuid4().hex[:8])
    return study


def load(storage: Any, name: str) -> tuple[Any, Spec]:
    """Study ``name`` in an open storage and its stored spec, validated by this kdsearch."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise unknown_name("study", name, names or ["(no studies: run create-study)"]) from None
    if SPEC_ATTR not in study.user_attrs:
        raise KDSearchError(
            f"study {name!r} was not created by kdsearch (no stored spec); "
            "create it with `kdsearch create-study SPEC`"
        )
    version = study.user_attrs.get(VERSION_ATTR, 0)
    if version != specs.SPEC_VERSION:
        raise KDSearchError(
            f"study {name!r} was created by an incompatible kdsearch (spec version {version}, "
            f"this one reads {specs.SPEC_VERSION}); use a matching kdsearch or create a new study"
        )
    return study, specs.from_dict(study.user_attrs[SPEC_ATTR])


def load_spec(storage: Any, name: str) -> Spec:
    """The spec stored on study ``name`` (see :func:`load`)."""
    return load(storage, name)[1]


def extend(storage: Any, name: str, n_trials: int) -> int:
    """Raise study ``name``'s budget (``search.n_trials``) to ``n_trials``; returns the old one.

    Only raising is allowed: a lower budget would not undo trials already run, and every other
    spec key is fixed for the life of a study (trials must stay comparable).
    Both arms of a study with ``search.baseline`` grow together, so their budgets stay equal.
    """
    study, _ = load(storage, name)  # an unknown or foreign study fails here
    both = [study, *siblings(storage, study, "extend")]
    old = study.user_attrs[SPEC_ATTR]["search"]["n_trials"]
    if n_trials <= old:
        raise KDSearchError(
            f"extend {name}: --n-trials {n_trials} must be larger than the current budget {old}"
        )
    for arm in both:
        stored = arm.user_attrs[SPEC_ATTR]
        stored["search"]["n_trials"] = n_trials
        arm.set_user_attr(SPEC_ATTR, stored)
    return old


def siblings(storage: Any, study: Any, action: str) -> list[Any]:
    """The baseline arm of ``study`` (none without one), loaded to ``action`` it with its
    study; ``action`` on a baseline arm alone is refused, since both arms must keep one
    budget and one life."""
    of = study.user_attrs.get(BASELINE_OF_ATTR)
    if of is not None:
        raise KDSearchError(
            f"study {study.study_name!r} is the baseline arm of {of!r}: {action} {of} "
            "(both arms go together)"
        )
    sibling = study.user_attrs.get(BASELINE_STUDY_ATTR)
    return [] if sibling is None else [load(storage, sibling)[0]]


def open_study(name: str, url: str | None = None, *, existing: bool = True) -> tuple[Any, Spec]:
    """Study ``name`` and its stored spec, from ``url`` (default: $KDSEARCH_STORAGE, else
    sqlite:///kdsearch.db).

    The one way the tools open a study: an unreachable database, an unknown study or one
    kdsearch did not create is a one-line error before anything is read or written.
    """
    return load(storages.open_storage(storages.resolve_url(url), existing=existing), name)


def prune_checkpoints(study: Any, keep: int, store: Any) -> None:
    """Delete the checkpoints (local and uploaded, ``store``: a
    :class:`~kdsearch.search.trial_files.CheckpointStore`) of all but the best ``keep``
    complete search trials, by their own value and by their configuration's mean over seeds
    (confirmation trials keep their test accuracy, not their checkpoint)."""
    import optuna

    from kdsearch.search import confidence, ranking

    # The candidates first, the ranking after: a trial another worker completes in between is
    # then either ranked or not deleted, never deleted unranked (it may be the best).
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    root = folder(study)  # a recorded path outside the study's folder is never deleted
    kept = {t.number for t in ranking.ranked(study)[:keep]}
    kept |= {r.configuration.trial.number for r in confidence.rank(study).rows[:keep]}
    if ranking.multi(study):  # the front is what a user picks from: keep all of it
        kept |= {t.number for t in ranking.pareto(study)}
    for t in complete:
        if t.number in kept:
            continue
        path = t.user_attrs.get("checkpoint")
        if path and Path(path).parent.is_dir() and inside(Path(path).parent, root):
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        store.remove_all(study, t)


def delete(storage: Any, name: str) -> Path | None:
    """Delete study ``name``, its uploads and its folder (the shared teacher cache stays),
    and its baseline arm's; returns the study's folder if it existed."""
    import optuna

    from kdsearch.search.trial_files import CheckpointStore

    study, _ = load(storage, name)
    arms = [study, *siblings(storage, study, "delete")]
    found = [folder(arm) for arm in arms]  # refuses an unsafe name or id before any deletion
    existed = found[0].is_dir()
    for arm, files in zip(arms, found, strict=True):
        store = CheckpointStore(load(storage, arm.study_name)[1].search.artifact_store, files.name)
        for t in arm.get_trials(deepcopy=False):
            store.remove_all(arm, t)
        optuna.delete_study(study_name=arm.study_name, storage=storage)
        if files.is_dir():
            shutil.rmtree(files)
    return found[0] if existed else None
