"""``kdsearch import-checkpoint`` on files saved the way the 2018 reference saved them.

The reference wrote ``best.pth.tar`` as ``{'state_dict', 'epoch', 'optim_dict'}``; its WRN,
DenseNet, ResNeXt and PreResNet teachers were wrapped in ``nn.DataParallel``, so every key
starts with ``module.`` (``shared/reference/seed_checkpoint_keys.json`` says which). An
imported teacher must compute exactly what the saved module computed, and a file that does
not fit must be refused whole, with nothing written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import torch
from torch import nn

from kdsearch import nets
from kdsearch.training.model_files import load_checkpoint, load_model

CLI = Callable[..., CompletedProcess[str]]


def _reference_keys() -> dict:
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        path = root / "shared" / "reference" / "seed_checkpoint_keys.json"
        if path.is_file():
            return json.loads(path.read_text())
    pytest.skip(
        "reference facts not found: expected ../shared/reference beside the checkout",
        allow_module_level=True,
    )


def _archs() -> list[tuple[str, bool]]:
    """(arch, saved with the ``module.`` prefix) for every architecture the reference saved."""
    keys = _reference_keys()
    return [
        (arch, facts["dataparallel_prefix"])
        for arch, facts in keys.items()
        if isinstance(facts, dict) and "dataparallel_prefix" in facts
    ]


def trained_like(model: nn.Module) -> nn.Module:
    """Random normalization statistics, so that importing buffers (not only weights) matters."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def _save_reference_style(model: nn.Module, path: Path, dataparallel: bool) -> None:
    """``utils.save_checkpoint`` of the reference: the (maybe DataParallel) module's keys."""
    state = model.state_dict()
    if dataparallel:
        state = {f"module.{k}": v for k, v in state.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.save({"state_dict": state, "epoch": 3, "optim_dict": optimizer.state_dict()}, path)


def _assert_same_function(original: nn.Module, out: Path) -> None:
    imported = load_model(out)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(imported(x), original(x))


def _one_line_error(proc: CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kdsearch: error: import-checkpoint:")
    return lines[0]


@pytest.mark.parametrize(("arch", "dataparallel"), _archs())
def test_reference_checkpoint_imports_to_the_same_function(
    arch: str, dataparallel: bool, cli: CLI, kd_home: Path
) -> None:
    torch.manual_seed(0)
    model = trained_like(nets.create(arch, num_classes=10))
    src, out = kd_home / "best.pth.tar", kd_home / "models" / f"{arch}-cifar10.pt"
    _save_reference_style(model, src, dataparallel)
    assert all(k.startswith("module.") == dataparallel for k in torch.load(src)["state_dict"])
    proc = cli("import-checkpoint", str(src), "--arch", arch, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out)
    assert (ckpt["arch"], ckpt["num_classes"]) == (arch, 10)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    _assert_same_function(model, out)


def test_plain_state_dict_imports(cli: CLI, kd_home: Path) -> None:
    model = trained_like(nets.create("cnn5", num_classes=10, num_channels=32))
    src, out = kd_home / "weights.pth", kd_home / "models" / "cnn5.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, src)
    proc = cli("import-checkpoint", str(src), "--arch", "cnn5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    _assert_same_function(model, out)


def test_wrong_arch_is_refused_naming_the_keys(cli: CLI, kd_home: Path) -> None:
    src, out = kd_home / "best.pth.tar", kd_home / "models" / "x.pt"
    _save_reference_style(nets.create("cnn5", num_classes=10), src, dataparallel=True)
    line = _one_line_error(
        cli("import-checkpoint", str(src), "--arch", "resnet18", "--out", str(out))
    )
    assert "missing (" in line and "unexpected (" in line
    assert "conv1.bias" in line  # a cnn5 key that resnet18 does not have
    assert not out.exists()


def test_wrong_num_classes_is_refused_naming_the_shapes(cli: CLI, kd_home: Path) -> None:
    src, out = kd_home / "best.pth.tar", kd_home / "models" / "x.pt"
    _save_reference_style(nets.create("cnn5", num_classes=10), src, dataparallel=False)
    proc = cli(
        "import-checkpoint", str(src), "--arch", "cnn5", "--num-classes", "100", "--out", str(out)
    )
    line = _one_line_error(proc)
    assert "shape (2): fc2.weight (10, 128) vs (100, 128), fc2.bias (10,) vs (100,)" in line
    assert "missing" not in line and "unexpected" not in line
    assert not out.exists()


def test_missing_key_is_refused(cli: CLI, kd_home: Path) -> None:
    model = nets.create("densenet100", num_classes=10)
    src, out = kd_home / "best.pth.tar", kd_home / "models" / "x.pt"
    _save_reference_style(model, src, dataparallel=True)
    raw = torch.load(src)
    dropped = next(k for k in raw["state_dict"] if k.endswith("running_var"))
    del raw["state_dict"][dropped]
    torch.save(raw, src)
    proc = cli("import-checkpoint", str(src), "--arch", "densenet100", "--out", str(out))
    line = _one_line_error(proc)
    assert f"missing (1): {dropped.removeprefix('module.')};" in line
    assert not out.exists() and not out.parent.exists()
