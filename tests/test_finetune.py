"""``kdsearch train-teacher SPEC --init CHECKPOINT``: fine-tuning starts from the checkpoint
and keeps its input normalization (an imported public teacher expects ImageNet's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import torch

from kdsearch import nets
from kdsearch.data.normalization import NAMED
from kdsearch.training.model_files import load_checkpoint

CLI = Callable[..., CompletedProcess[str]]

#: One epoch (4 batches) at a learning rate too small to move the weights visibly.
FINE_TUNE = {
    "teacher_train": {
        "epochs": 1,
        "optimizer": {"name": "sgd", "lr": 1.0e-7, "nesterov": True, "weight_decay": 5.0e-4},
        "schedule": {"name": "onecycle"},
    }
}


def test_init_starts_from_the_checkpoint_and_keeps_its_normalization(
    kd_home: Path, write_spec: Callable[..., Path], cli: CLI
) -> None:
    init = kd_home / "models" / "teacher.pt"
    ckpt = torch.load(init, weights_only=True)
    mean, std = NAMED["imagenet"]
    ckpt["normalization"] = {"mean": list(mean), "std": list(std)}
    torch.save(ckpt, init)
    spec, out = write_spec(FINE_TUNE), kd_home / "models" / "tuned.pt"
    proc = cli("train-teacher", str(spec), "--init", str(init), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    tuned = load_checkpoint(out)
    assert tuned["normalization"] == ckpt["normalization"]
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(tuned["state_dict"][key], value, rtol=0, atol=1e-4)
    # The same run without --init starts from fresh weights and the data set's constants.
    fresh = kd_home / "models" / "fresh.pt"
    assert cli("train-teacher", str(spec), "--out", str(fresh)).returncode == 0
    fresh_ckpt = load_checkpoint(fresh)
    assert fresh_ckpt["normalization"] != ckpt["normalization"]
    w = "conv1.weight"
    assert (fresh_ckpt["state_dict"][w] - ckpt["state_dict"][w]).abs().max() > 0.01


def test_init_of_another_shape_is_refused(
    kd_home: Path, write_spec: Callable[..., Path], cli: CLI
) -> None:
    other = write_spec({"teacher": {"kwargs": {"num_channels": 4}}}, name="other")
    init, out = kd_home / "models" / "teacher.pt", kd_home / "models" / "tuned.pt"
    proc = cli("train-teacher", str(other), "--init", str(init), "--out", str(out))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("kdsearch: error: --init:")
    assert "num_channels" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "arch", ["cnn5", "resnet20", "torchvision:mobilenet_v3_small", "timm:resnet10t"]
)
def test_replace_head_swaps_the_head_and_keeps_every_body_weight(arch: str) -> None:
    """What ``--init`` from another class count does to the network: the head (and only it)
    gets the new class count and fresh weights; every other tensor is the checkpoint's."""
    torch.manual_seed(0)
    model = nets.create(arch, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nets.replace_head(model, 10, 3, arch)
    after = model.state_dict()
    assert set(after) == set(before)
    head = {k for k, v in after.items() if v.shape != before[k].shape}
    assert head and all(after[k].shape[0] == 3 for k in head), head
    for k in set(before) - head:
        assert torch.equal(after[k], before[k]), k
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
