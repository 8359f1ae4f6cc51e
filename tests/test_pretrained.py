"""Real teachers: the CIFAR ResNet family and the public checkpoints in ``../shared/data``.

The two public files (``akamaster/pytorch_resnet_cifar10``) were saved on CUDA, from
``nn.DataParallel`` (``module.`` keys), by a torch older than 0.4.1 (no
``num_batches_tracked``), with a ``best_prec1`` beside the weights, and trained with ImageNet
normalization. They are the check of the architecture: imported, they must score what an
independent script measured on the JPEG copy of CIFAR-10 (ResNet-20: 81.03%).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import torch
import yaml

from kdsearch import nets
from kdsearch.data.normalization import NAMED
from kdsearch.training.model_files import load_checkpoint

CLI = Callable[..., CompletedProcess[str]]

PARAMETERS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


def _shared_data() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        if (root / "shared" / "data" / "pretrained").is_dir():
            return root / "shared" / "data"
    pytest.skip("shared data not found: expected ../shared/data beside the checkout")


@pytest.fixture(scope="module")
def shared() -> Path:
    return _shared_data()


@pytest.mark.parametrize(("arch", "count"), PARAMETERS.items())
def test_resnet_family_parameter_counts(arch: str, count: int) -> None:
    model = nets.create(arch, num_classes=10)
    assert nets.count_parameters(model) == count
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_public_files_are_what_the_importer_must_handle(shared: Path) -> None:
    """Saved on CUDA, ``module.`` keys, no ``num_batches_tracked``, an extra top-level key."""
    locations: list[str] = []

    def record(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        locations.append(location)
        return storage

    raw = torch.load(shared / "pretrained" / "resnet20-12fca82f.th", map_location=record)
    assert set(raw) == {"state_dict", "best_prec1"}
    assert locations and all(loc.startswith("cuda") for loc in locations)
    keys = list(raw["state_dict"])
    assert all(k.startswith("module.") for k in keys)
    assert not any(k.endswith("num_batches_tracked") for k in keys)


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_public_checkpoint_imports_on_cpu(arch: str, shared: Path, cli: CLI, kd_home: Path) -> None:
    src = next((shared / "pretrained").glob(f"{arch}-*.th"))
    out = kd_home / "models" / f"{arch}-cifar10.pt"
    proc = cli(
        "import-checkpoint", str(src), "--arch", arch, "--normalization", "imagenet",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out)
    assert ckpt["normalization"] == {
        "mean": list(NAMED["imagenet"][0]),
        "std": list(NAMED["imagenet"][1]),
    }
    state = ckpt["state_dict"]
    assert all(v.device.type == "cpu" for v in state.values())
    raw = torch.load(src, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in raw.items():
        assert torch.equal(state[key.removeprefix("module.")], value)
    counts = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counts) == (len(raw) - 2) // 5  # one per BN: conv + BN = 5 tensors, linear 2
    assert nets.count_parameters(nets.create(arch)) == PARAMETERS[arch]


def test_wrongly_shaped_public_checkpoint_is_refused(shared: Path, cli: CLI, kd_home: Path) -> None:
    out = kd_home / "models" / "x.pt"
    src = shared / "pretrained" / "resnet56-4bfd9763.th"
    proc = cli("import-checkpoint", str(src), "--arch", "resnet20", "--out", str(out))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("kdsearch: error: import-checkpoint:")
    assert "unexpected (180): layer1.3.conv1.weight" in line
    assert not out.exists() and not out.parent.exists()
    proc = cli(
        "import-checkpoint",
        str(src),
        "--arch",
        "resnet56",
        "--num-classes",
        "100",
        "--out",
        str(out),
    )
    assert proc.returncode == 2 and "shape (2): linear.weight (10, 64) vs (100, 64)" in proc.stderr
    assert not out.exists()


def test_normalization_forms(shared: Path, cli: CLI, kd_home: Path) -> None:
    src = shared / "pretrained" / "resnet20-12fca82f.th"
    out = kd_home / "models" / "r20.pt"
    proc = cli("import-checkpoint", str(src), "--arch", "resnet20", "--out", str(out),
               "--normalization", "0.5,0.4,0.3/0.2,0.25,0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(out)["normalization"] == {
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    }
    out.unlink()
    proc = cli("import-checkpoint", str(src), "--arch", "resnet20", "--out", str(out),
               "--normalization", "0.5,0.4/0.2")  # fmt: skip
    assert (
        proc.returncode == 2
        and "is not a normalization; use cifar10, cifar100, imagenet" in proc.stderr
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def jpeg_test_set(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JPEG copy's 10,000 test images; ``train`` points at them too, as ``evaluate`` only
    reads the test split and decoding the 50,000 training images would cost CI half a minute."""
    root = tmp_path_factory.mktemp("cifar10-jpg")
    subprocess.run(
        ["tar", "-xzf", str(shared / "cifar10-jpg.tar.gz"), "-C", str(root), "test"], check=True
    )
    (root / "train").symlink_to("test")
    return root


@pytest.mark.slow
def test_imported_resnet20_scores_its_measured_accuracy(
    shared: Path, jpeg_test_set: Path, cli: CLI, kd_home: Path
) -> None:
    """81.03% measured independently; also through a spec whose own normalization is CIFAR's
    (the teacher keeps the ImageNet constants of its checkpoint)."""
    out = kd_home / "models" / "resnet20-cifar10.pt"
    src = shared / "pretrained" / "resnet20-12fca82f.th"
    proc = cli(
        "import-checkpoint",
        str(src),
        "--arch",
        "resnet20",
        "--normalization",
        "imagenet",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    for normalization in (None, "cifar10"):
        dataset = {
            "name": "imagefolder",
            "root": str(jpeg_test_set),
            "normalization": normalization,
        }
        spec = kd_home / "jpg.yaml"
        spec.write_text(yaml.safe_dump({"dataset": dataset, "student": {"arch": "resnet20"}}))
        proc = cli("evaluate", str(out), "--spec", str(spec), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["test_images"] == 10_000
        assert report["test_accuracy"] == pytest.approx(0.8103, abs=0.001), normalization
        assert report["classes"][:3] == ["airplane", "automobile", "bird"]
