"""From a user's folder of photos to a student one can ship (issue 35), the commands a user
runs: ``init`` writes the spec, ``validate --data`` checks it and the photos, a teacher is
trained and a search run, ``export-model`` writes ONNX and TorchScript files that carry their
preprocessing and class names, checked against the checkpoint, and ``predict`` and
``load_student`` give the same answers from all three forms.

The folder is a slice of the CIFAR-10 JPEG copy in ``../shared/data`` laid out as
``train/<class>`` and ``val/<class>`` (tests/image_folders.py). Only the schedule lengths of
the spec ``init`` wrote are cut, for the suite's time. A second check builds the stored
preprocessing of a 40 px random-resized-crop data set (resize to 46, centre 40 crop) and
compares it with the pixels the data set decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import run_cli
from image_folders import own_images
from PIL import Image

from kdsearch.config.spec import from_dict
from kdsearch.data import datasets
from kdsearch.deploy.preprocess import Preprocess
from kdsearch.deploy.student import load_student
from kdsearch.training.model_files import load_checkpoint, model_of

CLASSES = ("airplane", "automobile", "bird")
#: What the test shortens in the spec init wrote: schedule lengths and the budget only.
SHORTER = {"teacher_train": {"epochs": 2}, "train": {"epochs": 2}, "search": {"n_trials": 2}}


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """init, validate --data, train-teacher, create-study, worker: as a user runs them."""
    home = tmp_path_factory.mktemp("deploy")
    photos = own_images(home / "photos", classes=3, train=40, val=10)
    env = {"KDSEARCH_HOME": str(home)}

    def kd(*args: str) -> str:
        proc = run_cli(*args, cwd=home, env=env)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        return proc.stdout

    kd("init", "--data", "photos", "--teacher", "resnet20", "--student", "cnn5", "-o", "pets.yaml")
    spec = yaml.safe_load((home / "pets.yaml").read_text())
    for key, values in SHORTER.items():
        spec[key].update(values)
    (home / "pets.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert "# pets.yaml: ok" in kd("validate", "pets.yaml", "--data")
    url = f"sqlite:///{home / 'kd.db'}"
    kd("train-teacher", "pets.yaml")
    kd("create-study", "pets.yaml", "--storage", url)
    kd("worker", "--study", "photos", "--storage", url, "--devices", "cpu")
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
            "export-model", "--study", "photos", "--storage", url, "--format", fmt,
            "--images", *images[:6], "--json", cwd=home, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["max_abs_diff"] <= 1e-4 * (1 + result["max_abs_logit"])
        assert result["checked_on"] == "6 images"
        assert result["classes"] == list(CLASSES)
        assert result["preprocess"]["image_size"] == result["preprocess"]["stored_size"] == 32
        assert set(result["latency_ms_b1"]) == {"checkpoint", fmt}
        outs[fmt] = home / result["path"]
        assert outs[fmt].is_file() and not list(home.glob(".*.partial"))
    study = optuna.load_study(study_name="photos", storage=url)
    checkpoint = home / study.best_trial.user_attrs["checkpoint"]
    # Every form predicts the same classes with the same probabilities, on all 30 photos.
    answers = {}
    for form, model in {"checkpoint": checkpoint, **outs}.items():
        proc = run_cli("predict", str(model), *images, "-k", "3", "--json", cwd=home, env=env)
        assert proc.returncode == 0, proc.stderr
        answers[form] = json.loads(proc.stdout)
    reference = answers.pop("checkpoint")
    assert len(reference) == len(images) == 30  # 10 photos of each class
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
    """At 40 px with random-resized crops, the stored transform (resize to 46, centre 40 crop)
    gives bit for bit the evaluation pixels the data set decoded: a resize straight to 40, or
    no centre crop, would not."""
    home, _, photos = searched
    spec = from_dict(
        {
            "name": "forty",
            "dataset": {
                "name": "imagefolder",
                "root": str(photos),
                "image_size": 40,
                "crop": "random_resized",
            },
            "student": {"arch": "resnet20"},
            "teacher": None,
            "distill": {"alpha": 0.0},
        }
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("KDSEARCH_HOME", str(home))
    try:
        splits = datasets.load(spec.dataset)
    finally:
        mp.undo()
    ckpt = {
        "dataset": datasets.describe(spec.dataset),
        "normalization": {"mean": list(splits.mean), "std": list(splits.std)},
    }
    pre = Preprocess.from_checkpoint(ckpt)
    assert (pre.image_size, pre.stored_size) == (40, 46)
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
