"""The study spec: one YAML file that is the whole experiment.

The YAML is read with ``yaml.safe_load`` (a spec never executes code), merged over the file
its ``base:`` key names, and validated once into frozen dataclasses. Every error names the key
path, the value and what is allowed, e.g. ``search.space.alpha.high: 1.5 is outside [0, 1]``.
Nothing downstream re-validates.

Searched parameters are plain overrides of spec keys: ``lr`` is ``train.optimizer.lr`` and a
user may search any numeric key by its dotted path (``train.optimizer.weight_decay``), so a
trial's configuration is always ``spec.with_overrides(trial.params)``, validated the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdsearch.config.metrics import COSTS, METRICS
from kdsearch.data import normalization
from kdsearch.errors import KDSearchError, unknown_name
from kdsearch.redact import mask_url
from kdsearch.schema import build, in_range, positive

log = logging.getLogger(__name__)

SPEC_VERSION = 1

#: Short names a search space may use for the hyperparameters every KD search tunes.
ALIASES: dict[str, str] = {
    "temperature": "distill.temperature",
    "alpha": "distill.alpha",
    "dropout": "student.kwargs.dropout",
    "lr": "train.optimizer.lr",
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "cifar10"
    root: str = "data"
    download: bool = False
    val_fraction: float = 0.1
    subset_fraction: float = 1.0
    labeled_fraction: float = 1.0
    augment: bool = True
    seed: int = 0
    #: The student's input normalization: the data set's own constants when unset, else
    #: ``cifar10``, ``cifar100``, ``imagenet`` or ``MEAN,MEAN,MEAN/STD,STD,STD``. A teacher
    #: always uses the constants stored in its checkpoint.
    normalization: str | None = None
    #: Side (px) of the square the network sees, in training and evaluation; unset: the data
    #: set's own size (32 for CIFAR, digits and synthetic data, and for image folders).
    image_size: int | None = None
    #: Shorter side (px) image folders are decoded to and kept at; unset: ``image_size`` for
    #: the pad crop, ``image_size / 0.875`` for random-resized crops (torchvision's 224 of 256),
    #: so evaluation's centre crop is torchvision's resize + centre crop.
    storage_size: int | None = None
    #: Resize whole images to a square, ignoring their aspect ratio (the default keeps it and
    #: cuts the long side's edges).
    squash: bool = False
    #: Training crop: ``pad`` (the CIFAR pad-4 crop, 162 exact views), ``random_resized``
    #: (torchvision's RandomResizedCrop at ``image_size``, scale ``[min_scale, 1]``) or
    #: ``auto``: pad up to 64 px, random-resized above.
    crop: Literal["auto", "pad", "random_resized"] = "auto"
    min_scale: float = 0.08
    #: Where decoded images live: ``memory`` (each process its own copy, on the device when it
    #: fits), ``mmap`` (one file every process maps, batches copied in the background) or
    #: ``auto``: memory up to 512 MiB of decoded images, mmap above.
    store: Literal["auto", "memory", "mmap"] = "auto"
    #: Skip (and count) image files that cannot be decoded instead of stopping on the first.
    skip_unreadable: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, path: str) -> None:
        if self.normalization is not None:
            normalization.parse(self.normalization, f"{path}.normalization")
        in_range(f"{path}.val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        in_range(f"{path}.subset_fraction", self.subset_fraction, 0.0, 1.0, low_open=True)
        in_range(f"{path}.labeled_fraction", self.labeled_fraction, 0.0, 1.0, low_open=True)
        in_range(f"{path}.min_scale", self.min_scale, 0.0, 1.0, low_open=True)
        for key in ("image_size", "storage_size"):
            if getattr(self, key) is not None:
                in_range(f"{path}.{key}", getattr(self, key), 8, 4096)
        if self.crop_mode == "pad" and self.storage_size not in (None, self.image_size):
            raise KDSearchError(
                f"{path}.storage_size: {self.storage_size} differs from image_size "
                f"({self.image_size or 32}), which the pad crop keeps; remove storage_size or "
                "set crop: random_resized"
            )
        if self.storage_size is not None and self.storage_size < self.input_size:
            raise KDSearchError(
                f"{path}.storage_size: {self.storage_size} is below image_size "
                f"({self.input_size}); the centre crop needs at least image_size pixels"
            )

    @property
    def input_size(self) -> int:
        """The side (px) of the network's input."""
        return self.image_size or 32

    @property
    def crop_mode(self) -> str:
        """``pad`` or ``random_resized``: ``crop`` with ``auto`` resolved by the input size."""
        if self.crop != "auto":
            return self.crop
        return "random_resized" if self.input_size > 64 else "pad"

    @property
    def stored_size(self) -> int:
        """The side (px) images are kept at: ``storage_size`` or its default."""
        if self.storage_size is not None:
            return self.storage_size
        if self.crop_mode == "pad":
            return self.input_size
        return round(self.input_size / 0.875)


@dataclass(frozen=True)
class NetSpec:
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False

    def check(self, path: str) -> None:
        positive(f"{path}.lr", self.lr)
        in_range(f"{path}.momentum", self.momentum, 0.0, 1.0, high_open=True)
        in_range(f"{path}.weight_decay", self.weight_decay, 0.0, math.inf)


@dataclass(frozen=True)
class ScheduleSpec:
    #: ``onecycle`` (torch's OneCycleLR, peaking at the optimizer's lr after ``pct_start`` of
    #: the run) steps every batch, for short fine-tuning runs; the others step every epoch.
    name: Literal["none", "step", "cosine", "onecycle"] = "none"
    step_size: int = 30
    gamma: float = 0.1
    pct_start: float = 0.3

    def check(self, path: str) -> None:
        positive(f"{path}.step_size", self.step_size)
        in_range(f"{path}.gamma", self.gamma, 0.0, 1.0, low_open=True)
        in_range(f"{path}.pct_start", self.pct_start, 0.0, 1.0, low_open=True, high_open=True)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 30
    batch_size: int = 128
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    tensorboard: bool = False

    def check(self, path: str) -> None:
        positive(f"{path}.epochs", self.epochs)
        positive(f"{path}.batch_size", self.batch_size)
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise KDSearchError(
                f"{path}.device: {self.device!r} is not a device (use auto, cpu, cuda or cuda:N)"
            )


@dataclass(frozen=True)
class DistillSpec:
    loss: str = "hinton"
    temperature: float = 4.0
    alpha: float = 0.9
    #: ``all_views`` (exact, every crop/flip view), ``sampled:K`` (K seeded views per image)
    #: or ``none`` (online teacher, for augmentations that cannot be enumerated).
    teacher_cache: str = "all_views"
    #: The method's own options (``beta`` for dkd, ...), validated per method; see
    #: :func:`kdsearch.distill.check_options`.
    kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self, path: str) -> None:
        positive(f"{path}.temperature", self.temperature)
        in_range(f"{path}.alpha", self.alpha, 0.0, 1.0)
        self.cache_views()

    def cache_views(self) -> int | None:
        """Views per image the teacher cache holds: ``None`` for all views, 0 for no cache."""
        mode = str(self.teacher_cache)
        if mode == "all_views":
            return None
        if mode == "none":
            return 0
        if mode.startswith("sampled:") and mode[8:].strip().isdigit() and int(mode[8:]) > 0:
            return int(mode[8:])
        raise KDSearchError(
            f"distill.teacher_cache: {mode!r} is not allowed (use all_views, none or sampled:K)"
        )


@dataclass(frozen=True)
class ParamSpec:
    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def check(self, path: str) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise KDSearchError(f"{path}.choices: a categorical parameter needs choices")
            return
        if self.low is None or self.high is None:
            raise KDSearchError(f"{path}: a {self.type} parameter needs low and high")
        for bound in ("low", "high"):
            if not math.isfinite(getattr(self, bound)):
                raise KDSearchError(f"{path}.{bound}: {getattr(self, bound)} is not finite")
        if self.low >= self.high:
            raise KDSearchError(f"{path}.low: {self.low} must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise KDSearchError(f"{path}.low: {self.low} must be > 0 when log: true")
        if self.type == "int":
            for bound in ("low", "high", "step"):
                value = getattr(self, bound)
                if value is not None and value != int(value):
                    raise KDSearchError(
                        f"{path}.{bound}: {value} is not an integer (type: int needs integer "
                        "bounds and step; use type: float for fractional values)"
                    )


@dataclass(frozen=True)
class ConfirmSpec:
    """Confirmation runs (:mod:`kdsearch.search.confirm`): once the search budget is spent,
    the ``top`` best distinct configurations are trained again with ``seeds`` new seeds each,
    so the study can rank configurations by their mean over seeds instead of one lucky draw."""

    top: int = 3
    seeds: int = 3

    def check(self, path: str) -> None:
        for key in ("top", "seeds"):
            if getattr(self, key) < 1:
                raise KDSearchError(
                    f"{path}.{key}: {getattr(self, key)} must be at least 1 (or remove "
                    f"{path} to confirm nothing)"
                )


@dataclass(frozen=True)
class SearchSpec:
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: int = 20
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "hyperband"})
    space: dict[str, ParamSpec] = field(default_factory=dict)
    max_retries: int = 2
    heartbeat_interval: int = 10
    grace_period: int = 30
    keep_checkpoints: int = 3
    #: Where checkpoints are also uploaded so a retry on another machine can resume: a shared
    #: folder or ``s3://bucket`` (Optuna's artifact stores); unset keeps them local only.
    artifact_store: str | None = None
    #: What the study optimizes: ``val_accuracy`` first (maximized), then costs to minimize
    #: (``student_params``, ``flops``, ``latency_ms``); see :mod:`kdsearch.search.ranking`.
    objectives: list[str] = field(default_factory=lambda: ["val_accuracy"])
    #: Ceilings on costs, ``{student_params: {max: 100000}}``: a trial over one is pruned
    #: before training and is never a study's best.
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``{top: K, seeds: N}``: after the search, re-train the K best configurations with N new
    #: seeds each (confirmation trials, counted apart from ``n_trials``); unset: none.
    confirm: ConfirmSpec | None = None
    #: Also search the student without a teacher, as a sibling study ``<study>-baseline`` with
    #: the same budget, sampler, pruner and confirmation (:meth:`Spec.baseline_spec`), so the
    #: gain of distilling is the confirmed best of each arm, each tuned alike
    #: (:mod:`kdsearch.search.gain`).
    baseline: bool = False

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        """Optuna's directions, one per objective."""
        if len(self.objectives) == 1:
            return [self.direction]
        # Accuracy first, then the costs.
        return ["minimize" if i else "maximize" for i in range(len(self.objectives))]

    def check(self, path: str) -> None:
        self._check_objectives(path)
        positive(f"{path}.n_trials", self.n_trials)
        positive(f"{path}.heartbeat_interval", self.heartbeat_interval)
        if self.grace_period <= self.heartbeat_interval:
            raise KDSearchError(
                f"{path}.grace_period: {self.grace_period} must exceed heartbeat_interval "
                f"({self.heartbeat_interval})"
            )
        in_range(f"{path}.max_retries", self.max_retries, 0, math.inf)
        in_range(f"{path}.keep_checkpoints", self.keep_checkpoints, 0, math.inf)
        for key in ("sampler", "pruner"):
            if "name" not in getattr(self, key):
                raise KDSearchError(f"{path}.{key}: needs a name, e.g. {{name: tpe}}")
        if len(self.objectives) > 1 and self.pruner["name"] != "none":
            raise KDSearchError(
                f"{path}.pruner: Optuna cannot prune a study with several objectives; set "
                f"{path}.pruner: {{name: none}} (or keep one objective and use "
                f"{path}.constraints, which keeps pruning)"
            )

    def _check_objectives(self, path: str) -> None:
        if not self.objectives or self.objectives[0] != "val_accuracy":
            raise KDSearchError(
                f"{path}.objectives: {self.objectives!r} must start with val_accuracy (then any "
                f"of {', '.join(COSTS)}), e.g. [val_accuracy, student_params]"
            )
        for name in self.objectives:
            if name not in METRICS:
                raise unknown_name(f"{path}.objectives", name, METRICS)
        if len(set(self.objectives)) != len(self.objectives):
            raise KDSearchError(f"{path}.objectives: {self.objectives!r} names one twice")
        if len(self.objectives) > 1 and self.direction != "maximize":
            raise KDSearchError(
                f"{path}.direction: with several objectives val_accuracy is maximized and the "
                f"costs minimized; remove direction: {self.direction}"
            )
        for name, limit in self.constraints.items():
            if name not in COSTS:
                raise unknown_name(f"{path}.constraints", name, COSTS)
            if set(limit) != {"max"}:
                raise KDSearchError(
                    f"{path}.constraints.{name}: {limit!r} must be {{max: N}}, e.g. {{max: 100000}}"
                )
            positive(f"{path}.constraints.{name}.max", limit["max"])


@dataclass(frozen=True)
class Spec:
    name: str
    dataset: DatasetSpec
    student: NetSpec
    teacher: NetSpec | None = None
    train: TrainSpec = field(default_factory=TrainSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    storage: str | None = None
    #: Training settings for ``kdsearch train-teacher``, merged over ``train``.
    teacher_train: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-safe)."""
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the storage URL's password masked: the form stored on a study
        and shown to anyone (its note, its artifact, ``validate``)."""
        data = self.to_dict()
        if data.get("storage"):
            data["storage"] = mask_url(data["storage"])
        return data

    @property
    def distills(self) -> bool:
        """Whether training uses a teacher at all (alpha=0 is the plain baseline)."""
        return self.teacher is not None and self.distill.alpha > 0

    def with_overrides(self, overrides: dict[str, Any]) -> Spec:
        """A new spec with dotted keys (or search aliases) replaced, validated again."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_path(data, ALIASES.get(key, key), value)
        return from_dict(data)

    def teacher_spec(self) -> Spec:
        """The spec ``train-teacher`` trains: the teacher as the net, on all training labels.

        Validation and test images stay held out, as for every student. ``subset_fraction``
        and ``labeled_fraction`` are the students' data, not the teacher's: the partial-data
        experiment compares students on a subset with and without one teacher trained on
        everything (``cnn_partial_05/20/100`` share it), so a teacher trained on the subset
        would change what the comparison means. One line says so, since a user who set them
        to train faster would otherwise not know.
        """
        if self.teacher is None:
            raise KDSearchError("teacher: the spec has no teacher section to train")
        partial = {
            key: value
            for key, value in (
                ("subset_fraction", self.dataset.subset_fraction),
                ("labeled_fraction", self.dataset.labeled_fraction),
            )
            if value < 1.0
        }
        if partial:
            said = " and ".join(f"dataset.{key} {value:g}" for key, value in partial.items())
            log.info(
                "%s %s for the students only: the teacher trains on every training image "
                "and label (the students are compared with a fully trained teacher)",
                said,
                "are" if len(partial) > 1 else "is",
            )
        data = self.to_dict()
        data["student"] = {"arch": self.teacher.arch, "kwargs": self.teacher.kwargs}
        # The teacher is the fixed, fully trained model: every training image and label.
        data["dataset"].update(subset_fraction=1.0, labeled_fraction=1.0)
        data["search"].update(space={}, baseline=False)
        data["teacher"] = None
        # No distillation: the default method, none of the students' method options.
        data["distill"].update(alpha=0.0, loss="hinton", kwargs={})
        data["train"] = merge(data["train"], self.teacher_train)
        return from_dict(data)

    def baseline_spec(self) -> Spec:
        """The tuned baseline's spec (``search.baseline``): the same student, data, training,
        budget, sampler, pruner and confirmation, without a teacher. Distillation keys leave
        the space (alpha is 0, so they would change nothing and waste trials on duplicates)."""
        data = self.to_dict()
        data["teacher"] = None
        data["distill"].update(alpha=0.0, loss="hinton", kwargs={})
        data["search"]["space"] = {
            key: value for key, value in data["search"]["space"].items() if not _distills(key)
        }
        data["search"]["baseline"] = False
        return from_dict(data)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces.

    A mapping that names a different ``name`` (another optimizer, sampler or pruner) replaces
    the base's whole, so arguments of the old one do not leak into the new one; a null value
    removes the base's key (back to the default).
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None and isinstance(out.get(key), dict):
            out.pop(key)
            continue
        old = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("name", old.get("name")) == old.get("name")
        ):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for i, part in enumerate(parents):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise KDSearchError(f"{'.'.join(parents[: i + 1])}: not a section, cannot set {dotted}")
    node[last] = value


def _distills(key: str) -> bool:
    """Whether search-space key ``key`` is a distillation setting (alpha, temperature, the
    method or its options), meaningless without a teacher."""
    return ALIASES.get(key, key).startswith("distill.")


def _check_baseline(spec: Spec) -> None:
    """``search.baseline`` needs a teacher to compare with, one accuracy to compare and
    something left to search once distillation keys are gone."""
    if not spec.search.baseline:
        return
    if spec.teacher is None:
        raise KDSearchError(
            "search.baseline: the spec has no teacher, so every trial already is the baseline; "
            "remove search.baseline or add a teacher section"
        )
    if len(spec.search.objectives) > 1:
        raise KDSearchError(
            "search.baseline: the gain compares each arm's most accurate configuration, which "
            "several objectives do not single out; keep objectives: [val_accuracy] (cost "
            "ceilings go in search.constraints)"
        )
    if all(_distills(key) for key in spec.search.space):
        raise KDSearchError(
            "search.baseline: without distillation keys the space has nothing to search "
            f"({', '.join(spec.search.space) or 'it is empty'}); add a student or training "
            "key such as lr or dropout, or compare with one baseline: kdsearch best --baseline"
        )


def _check_space(spec: Spec) -> None:
    valid_targets = _numeric_paths(spec.to_dict())
    for key, param in spec.search.space.items():
        target = ALIASES.get(key, key)
        if target in ("distill.loss", "student.arch") or target.startswith("distill.kwargs."):
            continue  # checked with the methods and nets, in _check_registries
        if target.startswith(("dataset.", "teacher.", "search.")):
            raise KDSearchError(
                f"search.space.{key}: {target} cannot be searched (data, teacher and search "
                "settings are fixed per study); search student, train or distill keys"
            )
        if target not in valid_targets and not target.startswith("student.kwargs."):
            close = difflib.get_close_matches(key, [*ALIASES, *valid_targets], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KDSearchError(
                f"search.space.{key}: not a spec key{hint} "
                f"(use {', '.join(ALIASES)} or a dotted key such as train.optimizer.weight_decay)"
            )
        if target in ("distill.alpha", "student.kwargs.dropout") and param.type != "categorical":
            for bound in ("low", "high"):
                in_range(f"search.space.{key}.{bound}", getattr(param, bound), 0.0, 1.0)
        if target == "distill.temperature" and param.type != "categorical":
            assert param.low is not None  # ParamSpec.check requires both
            positive(f"search.space.{key}.low", param.low)


def _numeric_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _numeric_paths(value, dotted + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.add(dotted)
    return out


def _check_registries(spec: Spec) -> None:
    """Names that must exist in the registries: architectures, their arguments, data, loss."""
    from kdsearch import nets
    from kdsearch.data import datasets

    for key, net in (("student", spec.student), ("teacher", spec.teacher)):
        if net is None:
            continue
        archs = [net.arch]
        param = spec.search.space.get(f"{key}.arch")
        if param is not None:
            if param.type != "categorical":
                raise KDSearchError(
                    f"search.space.{key}.arch: an architecture is searched as a categorical, "
                    "e.g. {type: categorical, choices: [cnn5, resnet18]}"
                )
            archs += param.choices or []
        searched = [
            ALIASES.get(k, k).removeprefix(f"{key}.kwargs.")
            for k in spec.search.space
            if ALIASES.get(k, k).startswith(f"{key}.kwargs.")
        ]
        for arch in archs:  # every searched architecture takes every set or searched kwarg
            nets.check_arch(arch, f"{key}.arch")
            allowed = nets.kwarg_names(arch)
            for name in [*net.kwargs, *searched]:
                if name not in allowed:
                    raise KDSearchError(
                        f"{key}.kwargs.{name}: {arch} takes no argument {name!r} "
                        + nets.refused(name, allowed)
                    )
    if spec.dataset.name not in datasets.names():
        raise unknown_name("dataset.name", spec.dataset.name, datasets.names())
    _check_methods(spec)


def _check_methods(spec: Spec) -> None:
    """``distill.loss`` (fixed or searched) and ``distill.kwargs`` (set or searched).

    Every method the study may run must exist; each kwarg must belong to one of them (the
    others ignore it) and hold a valid value for it, at both ends of a searched range.
    """
    from kdsearch import distill

    methods = [spec.distill.loss]
    searched: dict[str, ParamSpec] = {}
    for key, param in spec.search.space.items():
        target = ALIASES.get(key, key)
        if target == "distill.loss":
            if param.type != "categorical":
                raise KDSearchError(
                    f"search.space.{key}: distill.loss is searched as a categorical, e.g. "
                    "{type: categorical, choices: [hinton, dkd]}"
                )
            methods += param.choices or []
        elif target.startswith("distill.kwargs."):
            searched[target.removeprefix("distill.kwargs.")] = param
    for method in methods:
        if method not in distill.names():
            raise unknown_name("distill.loss", method, distill.names())
    distill.check_options(spec.distill.kwargs, methods)
    for name, param in searched.items():
        if param.type == "categorical":
            values = param.choices or []
        else:
            cast = int if param.type == "int" else float
            assert param.low is not None and param.high is not None  # ParamSpec.check requires both
            values = [cast(param.low), cast(param.high)]
        for value in values:
            distill.check_options({**spec.distill.kwargs, name: value}, methods)
    online = [m for m in methods if distill.get(m).needs_online_teacher]
    if online and spec.distill.cache_views() != 0:
        raise KDSearchError(
            f"distill.loss: {online[0]} reads the teacher's intermediate features, which the "
            f"logit cache (teacher_cache: {spec.distill.teacher_cache}) does not hold; "
            "set distill.teacher_cache: none"
        )


def _check_cache(spec: Spec) -> None:
    """Random-resized crops are continuous: no cache can hold every view of them."""
    if spec.teacher is None or spec.distill.cache_views() is not None:
        return
    if spec.dataset.crop_mode == "random_resized" and spec.dataset.augment:
        raise KDSearchError(
            "distill.teacher_cache: all_views cannot enumerate random-resized crops "
            f"(dataset.image_size {spec.dataset.input_size}); use sampled:K (K views per image, "
            "K at least train.epochs) or none (the teacher runs on every batch)"
        )


def from_dict(data: dict[str, Any]) -> Spec:
    """Validate plain data into a :class:`Spec` (the form stored on a study, too)."""
    spec = build(Spec, data, "")
    _check_registries(spec)
    if spec.version > SPEC_VERSION:
        raise KDSearchError(
            f"version: spec version {spec.version} is newer than this kdsearch understands "
            f"({SPEC_VERSION}); upgrade kdsearch"
        )
    _check_space(spec)
    _check_cache(spec)
    _check_baseline(spec)
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the
    last one silently, so a typo'd copy of a section would override the real one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise KDSearchError(
                    f"{self.name}: key {key!r} appears twice (lines {seen[key]} and {line}); "
                    "keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Parse a YAML mapping, following ``base:`` (a path relative to the file) recursively."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise KDSearchError(f"{_seen[0]}: base: files extend each other in a cycle ({chain})")
    if path.is_dir():
        raise KDSearchError(f"{path}: is a folder, not a spec file; name a .yaml file in it")
    if not path.is_file():
        raise KDSearchError(f"{path}: no such spec file (specs live under studies/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise KDSearchError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the spec as UTF-8"
        ) from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise KDSearchError(f"{path}: malformed YAML at {where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise KDSearchError(f"{path}: malformed YAML: {err}") from None
    if not isinstance(data, dict):
        raise KDSearchError(f"{path}: a spec is a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(read_yaml(path.parent / str(base), (*_seen, path.resolve())), data)


def load(path: str | Path) -> Spec:
    """Read and validate a spec file; the study name defaults to the file's stem."""
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return from_dict(data)
