"""Study specs: the shipped studies validate, and every mistake is one clear, located error."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SYNTHETIC_SPEC

from kdsearch.config.spec import Spec, from_dict, load
from kdsearch.data import datasets
from kdsearch.data.datasets import UNLABELED
from kdsearch.errors import KDSearchError

STUDIES = ROOT / "studies"


def overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base`` (a plain test helper, independent of kdsearch)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _write(path: Path, content: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def _load(tmp_path: Path, overrides: dict[str, Any]) -> Spec:
    return load(_write(tmp_path / "spec.yaml", overlay(SYNTHETIC_SPEC, overrides)))


def _error(tmp_path: Path, overrides: dict[str, Any]) -> str:
    with pytest.raises(KDSearchError) as err:
        _load(tmp_path, overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- the shipped studies ----------------------------------------------------------------------


def test_digits_quick_loads() -> None:
    """studies/digits_quick.yaml loads with the values it spells out."""
    spec = load(STUDIES / "digits_quick.yaml")
    assert spec.name == "digits_quick"
    assert spec.dataset.name == "digits" and spec.dataset.labeled_fraction == 0.05
    assert spec.dataset.augment is False
    assert spec.teacher is not None and spec.teacher.kwargs == {"num_channels": 64}
    assert spec.student.arch == "cnn5" and spec.student.kwargs == {"num_channels": 4}
    assert spec.train.optimizer.lr == 3.0e-3 and spec.train.epochs == 20
    assert (spec.distill.temperature, spec.distill.alpha) == (4.0, 0.9)
    assert set(spec.search.space) == {"temperature", "alpha", "dropout", "lr"}
    assert spec.search.space["lr"].log is True
    assert spec.distills


def _study_files() -> list[Path]:
    files = sorted([*STUDIES.rglob("*.yaml"), *STUDIES.rglob("*.yml")])
    return [
        f
        for f in files
        if "base" not in f.relative_to(STUDIES).parts[:-1] and not f.name.startswith("_")
    ]


def test_every_study_validates() -> None:
    """Every spec under studies/ (found now, not at import; base/ and _* skipped) loads."""
    files = _study_files()
    assert STUDIES / "digits_quick.yaml" in files
    failures = []
    for f in files:
        try:
            load(f)
        except KDSearchError as err:
            failures.append(f"{f.relative_to(ROOT)}: {err}")
    assert not failures, "\n".join(failures)


def test_synthetic_spec_defaults(tmp_path: Path) -> None:
    """The fixture spec loads; unset keys take the documented defaults; name from the file."""
    data_ = {k: v for k, v in SYNTHETIC_SPEC.items() if k != "name"}
    spec = load(_write(tmp_path / "my_study.yaml", data_))
    assert spec.name == "my_study"
    assert spec.dataset.seed == 0 and spec.train.schedule.name == "none"
    assert spec.distill.loss == "hinton" and spec.search.direction == "maximize"
    assert spec.distill.cache_views() == 4


# --- errors name the key path, the value and what is allowed -------------------------------


def test_misspelled_top_level_key(tmp_path: Path) -> None:
    """``trian:`` is an unknown key, and the error suggests ``train``."""
    spec = {**SYNTHETIC_SPEC, "trian": SYNTHETIC_SPEC["train"]}
    with pytest.raises(KDSearchError) as err:
        load(_write(tmp_path / "s.yaml", spec))
    message = str(err.value)
    assert message.startswith("trian: unknown key")
    assert "did you mean 'train'?" in message


def test_misspelled_nested_key(tmp_path: Path) -> None:
    """``dataset.val_fracton`` names the full key path and suggests ``val_fraction``."""
    message = _error(tmp_path, {"dataset": {"val_fracton": 0.1}})
    assert message.startswith("dataset.val_fracton: unknown key")
    assert "did you mean 'val_fraction'?" in message


def test_misspelled_search_param_key(tmp_path: Path) -> None:
    """A typo inside a search parameter names search.space.<name>.<key>."""
    message = _error(tmp_path, {"search": {"space": {"alpha": {"hgh": 1}}}})
    assert message.startswith("search.space.alpha.hgh: unknown key")
    assert "did you mean 'high'?" in message


def test_unknown_student_arch(tmp_path: Path) -> None:
    """An unknown ``student.arch`` names the key and the nearest architecture."""
    message = _error(tmp_path, {"student": {"arch": "cnn6"}})
    assert message.startswith("student.arch: unknown 'cnn6'")
    assert "did you mean 'cnn5'?" in message and "resnet18" in message


def test_unknown_student_kwarg(tmp_path: Path) -> None:
    """A keyword the architecture does not take is named with the allowed ones."""
    message = _error(tmp_path, {"student": {"kwargs": {"num_chanels": 4}}})
    assert "student.kwargs.num_chanels" in message and "num_channels" in message


def test_unknown_dataset(tmp_path: Path) -> None:
    """An unknown ``dataset.name`` names the key and suggests the nearest data set."""
    message = _error(tmp_path, {"dataset": {"name": "cifar11"}})
    assert message.startswith("dataset.name: unknown 'cifar11'")
    assert "did you mean 'cifar10'?" in message


def test_alpha_out_of_range(tmp_path: Path) -> None:
    """A fixed alpha of 1.5 is outside [0, 1]."""
    assert "distill.alpha: 1.5 is outside [0, 1]" in _error(tmp_path, {"distill": {"alpha": 1.5}})


def test_searched_alpha_out_of_range(tmp_path: Path) -> None:
    """A searched alpha whose high is 1.5 is outside [0, 1]."""
    message = _error(tmp_path, {"search": {"space": {"alpha": {"high": 1.5}}}})
    assert "search.space.alpha.high: 1.5 is outside [0, 1]" in message


def test_low_not_below_high(tmp_path: Path) -> None:
    """low >= high is refused, naming the parameter."""
    message = _error(tmp_path, {"search": {"space": {"lr": {"low": 0.01, "high": 0.01}}}})
    assert message.startswith("search.space.lr.low: 0.01 must be below high")


def test_log_needs_positive_low(tmp_path: Path) -> None:
    """log: true with low <= 0 is refused."""
    space = {"train.optimizer.weight_decay": {"low": 0.0, "high": 0.1, "log": True}}
    message = _error(tmp_path, {"search": {"space": space}})
    assert message.startswith("search.space.train.optimizer.weight_decay.low: 0.0 must be > 0")
    assert "log: true" in message


def test_wrong_type(tmp_path: Path) -> None:
    """``epochs: "ten"`` is not an integer."""
    message = _error(tmp_path, {"train": {"epochs": "ten"}})
    assert message == "train.epochs: expected an integer, got 'ten'"


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        ({"train": {"optimizer": {"name": "rmsprop"}}}, "train.optimizer.name: 'rmsprop'"),
        ({"dataset": {"augment": "yes"}}, "dataset.augment: expected true or false"),
        ({"train": {"optimizer": {"lr": 0}}}, "train.optimizer.lr: 0"),
        ({"dataset": {"val_fraction": 1.0}}, "dataset.val_fraction: 1.0 is outside [0, 1)"),
        ({"distill": {"teacher_cache": "sampled:0"}}, "distill.teacher_cache: 'sampled:0'"),
        ({"search": {"space": {"lrr": {"low": 1e-4, "high": 1e-2}}}}, "search.space.lrr: not"),
    ],
)
def test_more_bad_values(tmp_path: Path, overrides: dict[str, Any], start: str) -> None:
    """Other bad values are refused with the key path first."""
    assert _error(tmp_path, overrides).startswith(start)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"search": {"space": {"lr": {"low": float("nan")}}}}, "search.space.lr.low"),
        ({"search": {"space": {"lr": {"high": float("inf")}}}}, "search.space.lr.high"),
        ({"train": {"optimizer": {"lr": float("inf")}}}, "train.optimizer.lr"),
        ({"distill": {"temperature": float("inf")}}, "distill.temperature"),
    ],
    ids=["space-low-nan", "space-high-inf", "lr-inf", "temperature-inf"],
)
def test_non_finite_numbers_are_refused(
    tmp_path: Path, overrides: dict[str, Any], key: str
) -> None:
    """``.nan`` / ``.inf`` (valid YAML floats) are refused at validation, naming the key.

    Nothing downstream re-validates: an infinite temperature makes the loss NaN, an infinite
    lr diverges, and a NaN search bound only fails inside the Optuna sampler of a worker.
    """
    assert _error(tmp_path, overrides).startswith(f"{key}: ")


def test_yaml_exponent_strings_are_numbers(tmp_path: Path) -> None:
    """``lr: 1e-3`` (a string in YAML 1.1) is read as the number it means."""
    path = tmp_path / "s.yaml"
    text = yaml.safe_dump(SYNTHETIC_SPEC, sort_keys=False).replace("lr: 0.003", "lr: 1e-3")
    assert "lr: 1e-3" in text
    assert load(_write(path, text)).train.optimizer.lr == pytest.approx(1e-3)


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    """Broken YAML is a KDSearchError that names the file and the line."""
    text = "name: x\ndataset:\n  name: digits\n  val_fraction: [0.1\nstudent: {arch: cnn5}\n"
    path = _write(tmp_path / "broken.yaml", text)
    with pytest.raises(KDSearchError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: malformed YAML at line ")
    line = int(re.search(r"line (\d+)", message).group(1))
    assert 4 <= line <= 5  # the unclosed list opens on line 4; PyYAML notices on line 5


def test_missing_file() -> None:
    """A path that does not exist is a KDSearchError, not a traceback."""
    with pytest.raises(KDSearchError, match="no such spec file"):
        load("studies/does_not_exist.yaml")


def test_not_a_mapping(tmp_path: Path) -> None:
    """A YAML list is not a spec."""
    with pytest.raises(KDSearchError, match="a spec is a YAML mapping"):
        load(_write(tmp_path / "list.yaml", "- a\n- b\n"))


# --- base: inheritance ------------------------------------------------------------------------


def test_base_inheritance_deep_merges_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``base:`` is relative to the spec file, chains, and merges mappings key by key."""
    root = {k: v for k, v in SYNTHETIC_SPEC.items() if k != "name"}
    _write(tmp_path / "studies" / "base" / "root.yaml", root)
    _write(
        tmp_path / "studies" / "base" / "mid.yaml",
        {"base": "root.yaml", "train": {"epochs": 9}, "distill": {"alpha": 0.25}},
    )
    child = _write(
        tmp_path / "studies" / "group" / "child.yaml",
        {
            "base": "../base/mid.yaml",
            "train": {"optimizer": {"lr": 0.05}},
            "search": {"space": {"alpha": {"high": 0.5}}},
        },
    )
    monkeypatch.chdir(tmp_path / "studies")  # relative to the file, not to the cwd
    spec = load(child)
    assert spec.name == "child"
    assert spec.train.epochs == 9  # from mid
    assert spec.train.batch_size == 64  # from root, beside a key the child overrides
    assert spec.train.optimizer.lr == 0.05 and spec.train.optimizer.name == "adam"
    assert spec.distill.alpha == 0.25 and spec.distill.temperature == 4.0
    alpha = spec.search.space["alpha"]
    assert (alpha.low, alpha.high) == (0.0, 0.5)
    assert set(spec.search.space) == {"temperature", "alpha", "lr"}


def test_base_other_optimizer_replaces_not_merges(tmp_path: Path) -> None:
    """A child naming another optimizer does not inherit the base optimizer's arguments."""
    root = overlay(
        {k: v for k, v in SYNTHETIC_SPEC.items() if k != "name"},
        {"train": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": True}}},
    )
    _write(tmp_path / "root.yaml", root)
    same = _write(tmp_path / "same.yaml", {"base": "root.yaml", "train": {"optimizer": {"lr": 1}}})
    other = _write(
        tmp_path / "other.yaml",
        {"base": "root.yaml", "train": {"optimizer": {"name": "adam", "lr": 0.01}}},
    )
    kept = load(same).train.optimizer
    assert (kept.name, kept.lr, kept.momentum, kept.nesterov) == ("sgd", 1.0, 0.5, True)
    replaced = load(other).train.optimizer
    assert (replaced.name, replaced.lr, replaced.momentum, replaced.nesterov) == (
        "adam",
        0.01,
        0.9,
        False,
    )


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    """Specs whose ``base:`` chain loops are a one-line KDSearchError, not a RecursionError."""
    _write(tmp_path / "a.yaml", {"base": "b.yaml", "name": "a"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(KDSearchError, match="base"):
        load(tmp_path / "a.yaml")


def test_base_missing(tmp_path: Path) -> None:
    """A ``base:`` that does not exist names the missing file."""
    path = _write(tmp_path / "s.yaml", {"base": "nope.yaml", "name": "x"})
    with pytest.raises(KDSearchError, match=re.escape(str(tmp_path / "nope.yaml"))):
        load(path)


# --- overrides and the teacher's spec ------------------------------------------------------


def test_with_overrides_sets_and_revalidates(tmp_path: Path) -> None:
    """``lr`` is train.optimizer.lr; dotted keys work; a bad override raises; original intact."""
    spec = _load(tmp_path, {})
    new = spec.with_overrides({"lr": 0.01, "alpha": 0.0, "train.optimizer.weight_decay": 5e-4})
    assert new.train.optimizer.lr == 0.01
    assert new.train.optimizer.weight_decay == 5e-4
    assert new.distill.alpha == 0.0 and not new.distills
    assert spec.train.optimizer.lr == 3e-3 and spec.distill.alpha == 0.5
    assert new.with_overrides({"dropout": 0.3}).student.kwargs == {
        "num_channels": 4,
        "dropout": 0.3,
    }
    with pytest.raises(KDSearchError, match=r"distill\.alpha: 1\.5 is outside \[0, 1\]"):
        spec.with_overrides({"alpha": 1.5})
    with pytest.raises(KDSearchError, match=r"train\.optimizer\.lr: -1"):
        spec.with_overrides({"lr": -1})
    with pytest.raises(KDSearchError, match=r"train\.optimizer\.lrr: unknown key"):
        spec.with_overrides({"train.optimizer.lrr": 0.1})


def test_searching_dataset_seed_is_refused(tmp_path: Path) -> None:
    """Data, teacher and search settings are fixed per study: ``dataset.seed`` is refused."""
    space = {"dataset.seed": {"type": "int", "low": 0, "high": 5}}
    message = _error(tmp_path, {"search": {"space": space}})
    assert message.startswith("search.space.dataset.seed: dataset.seed cannot be searched")


def test_teacher_spec_uses_all_labels() -> None:
    """The teacher trains on every training image and label, with the same held-out val."""
    spec = load(STUDIES / "digits_quick.yaml")
    teacher = spec.teacher_spec()
    assert teacher.student.arch == spec.teacher.arch
    assert teacher.student.kwargs == spec.teacher.kwargs
    assert teacher.dataset.labeled_fraction == 1.0 and teacher.dataset.subset_fraction == 1.0
    assert teacher.dataset.val_fraction == spec.dataset.val_fraction
    assert teacher.dataset.seed == spec.dataset.seed
    assert teacher.teacher is None and not teacher.distills and teacher.search.space == {}
    assert teacher.train.epochs == 15 and teacher.train.batch_size == spec.train.batch_size
    student_data, teacher_data = datasets.load(spec.dataset), datasets.load(teacher.dataset)
    assert (student_data.train.y == UNLABELED).sum() > 0
    assert (teacher_data.train.y != UNLABELED).all()
    assert len(teacher_data.train) == len(student_data.train)
    assert teacher_data.val.x.equal(student_data.val.x)


def test_teacher_spec_without_teacher(tmp_path: Path) -> None:
    """A spec without a teacher section cannot train one."""
    with pytest.raises(KDSearchError, match="no teacher section"):
        _load(tmp_path, {"teacher": None}).teacher_spec()


def test_stored_form_round_trips(tmp_path: Path) -> None:
    """``to_dict`` (what a study stores) validates back into an equal spec."""
    spec = _load(tmp_path, {})
    assert from_dict(spec.to_dict()) == spec


# --- the CLI ------------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "overrides",
    [{"distill": {"alpha": 1.5}}, {"dataset": {"val_fracton": 0.1}}],
    ids=["alpha", "typo"],
)
def test_cli_validate_bad_spec(
    kd_home: Path, cli: Callable[..., Any], overrides: dict[str, Any]
) -> None:
    """``kdsearch validate`` on a bad spec: exit 2, one ``kdsearch: error:`` line, no files."""
    path = _write(kd_home / "bad.yaml", overlay(SYNTHETIC_SPEC, overrides))
    before = _listing(kd_home)
    proc = cli("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kdsearch: error: ")
    assert ("distill.alpha" in lines[0]) or ("dataset.val_fracton" in lines[0])
    assert proc.stdout == ""
    assert _listing(kd_home) == before
    assert os.listdir(kd_home) == ["bad.yaml"]


def test_cli_validate_good_spec(kd_home: Path, cli: Callable[..., Any]) -> None:
    """``kdsearch validate`` on the demo study exits 0 and says ok."""
    proc = cli("validate", str(STUDIES / "digits_quick.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "ok (study digits_quick, 4 searched parameters)" in proc.stdout


def test_one_of_a_thing_is_said_in_the_singular(kd_home: Path, cli: Callable[..., Any]) -> None:
    """ "1 searched parameter", "after 1 epoch": counts a person reads agree with their noun."""
    from kdsearch.search.progress import count

    spec = yaml.safe_load((STUDIES / "digits_quick.yaml").read_text())
    spec["search"]["space"] = {"alpha": spec["search"]["space"]["alpha"]}
    (kd_home / "one.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("validate", "one.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "ok (study digits_quick, 1 searched parameter)" in proc.stdout
    assert [count(n, "epoch") for n in (0, 1, 2, 1000)] == [
        "0 epochs",
        "1 epoch",
        "2 epochs",
        "1,000 epochs",
    ]


@pytest.mark.parametrize(
    ("pruner", "epochs", "first_rung"),
    [
        ({"name": "hyperband"}, 50, 16),  # a third of the epochs, not Optuna's 1
        ({"name": "hyperband"}, 2, 1),
        ({"name": "hyperband", "min_resource": 3}, 50, 3),  # the spec's own wins
    ],
)
def test_hyperband_first_rung_waits_for_a_third_of_training(pruner, epochs, first_rung):
    """Distillation's best settings start slowest (bench/SEARCH.md): a rung at epoch 1 prunes
    them first, so Hyperband's default first rung is a third of the epochs."""
    from kdsearch.search.study import make_pruner

    spec = from_dict(
        {
            **SYNTHETIC_SPEC,
            "train": {**SYNTHETIC_SPEC["train"], "epochs": epochs},
            "search": {**SYNTHETIC_SPEC["search"], "pruner": pruner},
        }
    )
    made = make_pruner(spec)
    assert made._min_resource == first_rung
    assert made._max_resource == epochs
