"""From a finished search to a student one can ship (issue 35): ``export-model`` writes ONNX
and TorchScript files that carry their preprocessing and class names, checked against the
checkpoint; ``predict`` and ``load_student`` give the same answers from all three forms.

The data is a user's folder of real photos: a slice of the CIFAR-10 JPEG copy in
``../shared/data`` laid out as ``train/<class>`` and ``val/<class>``, trained at 40 px with
random-resized crops, so the stored preprocessing (resize to 46, centre 40 crop) is not the
identity.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import run_cli
from PIL import Image

from kdsearch import api
from kdsearch.deploy.preprocess import Preprocess
from kdsearch.deploy.student import load_student
from kdsearch.training.model_files import load_checkpoint, model_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
CLASSES = ("cat", "dog", "ship")


def user_folder(root: Path, train: int = 40, val: int = 10) -> Path:
    """``root/photos/{train,val}/<class>/*.jpg``: real JPEGs from the shared CIFAR-10 copy."""
    want = {("train", c): train for c in CLASSES} | {("test", c): val for c in CLASSES}
    with tarfile.open(SHARED) as tar:
        for member in tar:
            parts = Path(member.name).parts[-3:]
            key = tuple(parts[:2])
            if member.isfile() and want.get(key, 0) > 0:  # type: ignore[call-overload]
                want[key] -= 1  # type: ignore[index]
                split = "val" if parts[0] == "test" else "train"
                out = root / "photos" / split / parts[1] / parts[2]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
            if not any(want.values()):
                break
    return root / "photos"


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A finished two-trial search (no teacher: the export does not care) on the folder."""
    home = tmp_path_factory.mktemp("deploy")
    photos = user_folder(home)
    spec = {
        "name": "pets",
        "dataset": {
            "name": "imagefolder",
            "root": str(photos),
            "image_size": 40,
            "crop": "random_resized",
            "val_fraction": 0.2,
        },
        "student": {"arch": "resnet20"},
        "teacher": None,
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
        "distill": {"alpha": 0.0},
        "search": {
            "n_trials": 2,
            "pruner": {"name": "none"},
            "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        },
    }
    path = home / "pets.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    url = f"sqlite:///{home / 'kd.db'}"
    mp = pytest.MonkeyPatch()
    mp.chdir(home)
    mp.setenv("KDSEARCH_HOME", str(home))
    try:
        api.create_study(str(path), url)
        assert api.run_workers("pets", url, devices="cpu") == 0
    finally:
        mp.undo()
    return home, url, photos


def _images(photos: Path) -> list[Path]:
    return sorted((photos / "val").rglob("*.jpg"))


@pytest.mark.slow
def test_export_and_predict_agree_with_the_checkpoint(searched) -> None:
    home, url, photos = searched
    images = [str(p) for p in _images(photos)]
    env = {"KDSEARCH_HOME": str(home)}
    outs = {}
    for fmt in ("onnx", "torchscript"):
        proc = run_cli(
            "export-model", "--study", "pets", "--storage", url, "--format", fmt,
            "--images", *images[:6], "--json", cwd=home, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["max_abs_diff"] <= 1e-4 * (1 + result["max_abs_logit"])
        assert result["checked_on"] == "6 images"
        assert result["classes"] == list(CLASSES)
        assert result["preprocess"]["image_size"] == 40
        assert result["preprocess"]["stored_size"] == 46
        assert set(result["latency_ms_b1"]) == {"checkpoint", fmt}
        outs[fmt] = home / result["path"]
        assert outs[fmt].is_file() and not list(home.glob(".*.partial"))
    study = optuna.load_study(study_name="pets", storage=url)
    checkpoint = home / study.best_trial.user_attrs["checkpoint"]
    # Every form predicts the same classes with the same probabilities, on all 30 photos.
    answers = {}
    for form, model in {"checkpoint": checkpoint, **outs}.items():
        proc = run_cli("predict", str(model), *images, "-k", "3", "--json", cwd=home, env=env)
        assert proc.returncode == 0, proc.stderr
        answers[form] = json.loads(proc.stdout)
    reference = answers.pop("checkpoint")
    assert len(reference) == len(images) == 30
    for rows in answers.values():
        for mine, theirs in zip(rows, reference, strict=True):
            assert [t["class"] for t in mine["top"]] == [t["class"] for t in theirs["top"]]
            got = [t["probability"] for t in mine["top"]]
            assert got == pytest.approx([t["probability"] for t in theirs["top"]], abs=1e-5)
    # load_student's logits equal the checkpoint network's on the same input, within 1e-4.
    ckpt = load_checkpoint(checkpoint)
    net = model_of(ckpt)
    batch = Preprocess.from_checkpoint(ckpt).batch([Path(p) for p in images])
    with torch.inference_mode():
        expected = net(batch)
        for path in outs.values():
            model, transform, classes, _ = load_student(path)
            assert classes == list(CLASSES)
            got = model(transform.batch([Path(p) for p in images]))
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_preprocessing_is_what_training_evaluated_on(searched) -> None:
    """The stored transform reproduces the evaluation pixels the data set decoded: the same
    resize to 46 and centre 40 crop, bit for bit (unlike, say, a resize straight to 40)."""
    from kdsearch.data import datasets
    from kdsearch.search import study as studies
    from kdsearch.search.storage import open_storage

    home, url, photos = searched
    _, spec = studies.load(open_storage(url), "pets")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDSEARCH_HOME", str(home))
    try:
        splits = datasets.load(spec.dataset)
    finally:
        mp.undo()
    study = optuna.load_study(study_name="pets", storage=url)
    checkpoint = home / study.best_trial.user_attrs["checkpoint"]
    pre = Preprocess.from_checkpoint(load_checkpoint(checkpoint))
    stored = splits.test.x[0].numpy()  # the first val photo, in sorted order, as decoded
    assert stored.shape == (3, 46, 46)
    expected = torch.from_numpy(stored[:, 3:43, 3:43].copy())  # the evaluation centre crop
    x = pre.file(_images(photos)[0])
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in (pre.mean, pre.std))
    assert torch.equal(((x * std + mean) * 255).round().to(torch.uint8), expected)
    with Image.open(_images(photos)[0]) as img:  # a decoded image through the same steps
        assert torch.equal(pre(img), x)


def test_export_refuses_bad_input_in_one_line(searched, tmp_path: Path, capsys) -> None:
    from kdsearch import cli as kdcli

    photos = searched[2]
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"not a checkpoint")
    cases = [
        ["export-model", str(not_ckpt), "-o", str(tmp_path / "a.onnx")],
        ["export-model", "-o", str(tmp_path / "a.onnx")],  # neither checkpoint nor study
        ["export-model", str(not_ckpt), "-o", str(tmp_path / "nowhere" / "a.onnx")],
        ["predict", str(tmp_path / "missing.onnx"), str(_images(photos)[0])],
        ["predict", str(not_ckpt), str(tmp_path / "no.jpg")],
        ["predict", str(_images(photos)[0]), str(_images(photos)[0])],  # a photo as the model
    ]
    for argv in cases:
        assert kdcli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("kdsearch: error:") and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
