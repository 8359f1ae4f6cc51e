"""A study's name and stored id become a folder, so both are checked wherever a path is made
from them, not only at creation (issue 33): a study made with plain Optuna (or a copy of
kdsearch's attributes) under an unsafe name or id is refused by every command that would touch
files, and ``delete`` never removes anything outside the study's own folder."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from kdsearch import api
from kdsearch import cli as kdcli
from kdsearch.errors import KDSearchError
from kdsearch.search import study as studies
from kdsearch.search.storage import open_storage


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escape", "starts with '.'"),
        ("a/b", "contains '/'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("", "is empty"),
        ("a\\b", "contains '\\\\'"),
        ("tab\there", "contains '\\t'"),
        ("a b", "contains ' '"),
        ("x:y", "contains ':'"),
        ("st*r", "contains '*'"),
        ("café", "contains 'é'"),
        ("x" * 121, "is 121 bytes long (at most 120)"),
    ],
)
def test_a_study_name_unsafe_as_a_folder_is_refused(name: str, why: str) -> None:
    with pytest.raises(KDSearchError, match="it names the study's folder") as err:
        studies.check_name(name)
    assert why in str(err.value)
    assert "not starting with '.'" in str(err.value)  # the message states the whole rule


@pytest.mark.parametrize("name", ["cnn_distill-2026.12.06", "A", "x" * 120, "1.0"])
def test_names_of_the_allowed_characters_pass(name: str) -> None:
    studies.check_name(name)


def test_create_study_refuses_an_unsafe_name_before_writing(cli, write_spec, kd_home) -> None:
    out = cli(
        "create-study", str(write_spec()), "--storage", "sqlite:///kd.db", "--study-name", "../x"
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "starts with '.'" in out.stderr
    assert not (kd_home / "kd.db").exists() and not (kd_home / "models" / "studies").exists()


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (SQLite's own files aside: reads touch them)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".db" not in p.name
    }


@pytest.fixture
def crafted(write_spec, kd_home: Path) -> tuple[str, list[str]]:
    """A real kdsearch study, then studies made with plain Optuna carrying its attributes under
    unsafe names, and one under a safe name with a tampered id; a populated models/ beside."""
    url = f"sqlite:///{kd_home / 'kd.db'}"
    real = api.create_study(str(write_spec()), url)
    attrs = dict(real.user_attrs)
    storage = open_storage(url)
    made = []
    for name, sid in (("..", None), ("a b", None), ("x:y", "0a1b2c3d"), ("ok", "../../..")):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for key, value in attrs.items():
            if key != studies.ID_ATTR:
                study.set_user_attr(key, value)
        if sid is not None:
            study.set_user_attr(studies.ID_ATTR, sid)
        made.append(name)
    models = kd_home / "models"
    (models / "README.md").write_text("the user's notes\n")
    (models / "studies" / "other-12345678").mkdir(parents=True)
    (models / "studies" / "other-12345678" / "best.pt").write_bytes(b"weights")
    (kd_home / "keep.txt").write_text("outside models/\n")
    return url, made


@pytest.mark.parametrize("command", ["worker", "best", "report", "delete"])
def test_crafted_studies_are_refused_and_nothing_is_touched(
    command: str, crafted: tuple[str, list[str]], kd_home: Path, capsys
) -> None:
    url, names = crafted
    extra = {"worker": ["--devices", "cpu"], "delete": ["--yes"]}.get(command, [])
    before = _tree(kd_home)
    for name in names:
        code = kdcli.main([command, "--study", name, "--storage", url, *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (name, err)
        assert f"study {name!r}:" in err and "copy_study" in err, err
    assert _tree(kd_home) == before
    left = {s.study_name for s in optuna.get_all_study_summaries(open_storage(url))}
    assert set(names) <= left  # refused before the study itself was deleted


def test_delete_does_not_follow_a_link_out_of_models(write_spec, kd_home: Path) -> None:
    """A study's folder that is a link (made by whoever shares the machine) is refused, not
    emptied through the link."""
    url = f"sqlite:///{kd_home / 'kd.db'}"
    study = api.create_study(str(write_spec()), url)
    elsewhere = kd_home / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not the study's\n")
    path = studies.models_dir() / "studies" / f"synth-{studies.study_id(study)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, path)
    with pytest.raises(KDSearchError, match="leads outside"):
        api.delete_study("synth", url)
    assert (elsewhere / "precious.txt").is_file()


def test_pruning_never_deletes_a_recorded_path_outside_the_study(kd_home: Path) -> None:
    """``inside`` is what stands between a trial's recorded checkpoint and ``rmtree``."""
    root = kd_home / "models" / "studies" / "s-1"
    (root / "trial-00001").mkdir(parents=True)
    assert studies.inside(root / "trial-00001", root)
    assert not studies.inside(root, root)
    assert not studies.inside(root / ".." / "s-2" / "trial-00001", root)
    assert not studies.inside(kd_home, root)
