"""The network zoo against the 2018 reference: parameter counts, checkpoint keys, and logits.

The reference facts live in ``shared/reference`` beside the checkout; a network that has the
reference's state_dict keys and reproduces its logits from the same weights loads its teachers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdsearch import nets
from kdsearch.errors import KDSearchError

ARCHS = ["cnn5", "resnet18", "wrn28_10", "densenet100", "resnext29_8x64d", "preresnet110"]


def _reference_dir() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        if (root / "shared" / "reference").is_dir():
            return root / "shared" / "reference"
    pytest.skip("reference facts not found: expected ../shared/reference beside the checkout")


@pytest.fixture(scope="module")
def checkpoint_keys() -> dict:
    return json.loads((_reference_dir() / "seed_checkpoint_keys.json").read_text())


@pytest.fixture(scope="module")
def forward_check() -> dict:
    return json.loads((_reference_dir() / "seed_forward_check.json").read_text())


def _seed_state(keys: list[list]) -> dict[str, torch.Tensor]:
    """Fill every key as ``seed_forward_check.json``'s ``how`` says (one generator, key order)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in keys:
        kw = {"generator": gen, "dtype": torch.float64}
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, **kw)
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(shape, **kw)
        elif len(shape) >= 2:
            state[key] = torch.randn(shape, **kw) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, **kw)
        else:
            state[key] = 0.1 * torch.randn(shape, **kw)
    return state


def test_every_reference_arch_is_registered(checkpoint_keys: dict) -> None:
    assert sorted(checkpoint_keys) == sorted(ARCHS)
    assert set(ARCHS) <= set(nets.names())


@pytest.mark.parametrize("arch", ARCHS)
def test_parameters_and_keys_match_reference(arch: str, checkpoint_keys: dict) -> None:
    model = nets.create(arch)
    ref = checkpoint_keys[arch]
    assert nets.count_parameters(model) == ref["parameters"]
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert keys == ref["state_dict"]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_matches_reference_logits(
    arch: str, checkpoint_keys: dict, forward_check: dict
) -> None:
    model = nets.create(arch).double().eval()
    model.load_state_dict(_seed_state(checkpoint_keys[arch]["state_dict"]))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    expected = torch.tensor(forward_check["logits"][arch], dtype=torch.float64)
    rel = ((logits - expected).abs().max() / expected.abs().max()).item()
    assert rel < 1e-6, f"{arch}: max relative error {rel:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_one_sgd_step_trains(arch: str) -> None:
    torch.manual_seed(0)
    model = nets.create(arch).train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_num_classes_and_kwargs_reach_the_network() -> None:
    model = nets.create("cnn5", num_classes=100, num_channels=8, dropout=0.5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert nets.kwarg_names("cnn5") == ["num_channels", "dropout"]
    assert nets.kwarg_names("resnet18") == []


def test_unknown_arch_names_it() -> None:
    with pytest.raises(KDSearchError, match="resnet19"):
        nets.create("resnet19")
    with pytest.raises(KDSearchError, match="resnet19"):
        nets.kwarg_names("resnet19")


def test_unknown_kwarg_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(KDSearchError, match=r"cnn5: unknown argument 'dropout_rate'.*dropout"):
        nets.create("cnn5", dropout_rate=0.5)
    with pytest.raises(KDSearchError, match="resnet18: unknown argument 'dropout'"):
        nets.create("resnet18", dropout=0.1)


def test_bad_depth_is_a_user_error() -> None:
    with pytest.raises(KDSearchError, match="depth"):
        nets.create("wrn28_10", depth=27)


@pytest.mark.parametrize(("arch", "flops"), [("cnn5", 21.2e6), ("resnet18", 1.11e9)])
def test_forward_flops(arch: str, flops: float) -> None:
    model = nets.create(arch).train()
    assert nets.forward_flops(model) == pytest.approx(flops, rel=0.05)
    assert model.training
