"""torchvision and timm models by name: ``torchvision:resnet18``, ``timm:resnet10t``.

Small models, random weights, 32-pixel images: each test builds the real library model, and the
commands run as a user runs them. Pretrained weights come from a file put in torch's hub cache
(as a finished download leaves it); the download itself fails, as on a machine without internet.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import torch
import yaml
from conftest import SYNTHETIC_SPEC
from test_import_checkpoint import trained_like
from torch import nn
from torchvision import models

from kdsearch import distill, nets
from kdsearch.cli import build_parser
from kdsearch.config.spec import from_dict, merge
from kdsearch.data.normalization import NAMED
from kdsearch.errors import KDSearchError
from kdsearch.training.model_files import (
    import_reference,
    load_checkpoint,
    load_model,
    save_model,
)

CLI = Callable[..., CompletedProcess[str]]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
#: Every download goes to this closed port, so no test reaches the internet, wherever it runs.
NO_INTERNET = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def _one_line(text: str) -> str:
    assert "\n" not in str(text).strip(), text
    return str(text)


def _same_function(a: nn.Module, b: nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(X), b.eval()(X), rtol=0, atol=0)


def _spec(**over: Any) -> dict[str, Any]:
    """The synthetic spec with a torchvision teacher and a timm student."""
    data = merge(
        SYNTHETIC_SPEC,
        {
            "teacher": {"arch": "torchvision:resnet18", "kwargs": None},
            "student": {"arch": "timm:resnet10t", "kwargs": None},
        },
    )
    for key, value in over.items():
        data[key].update(value)
    return data


# --- names and keyword arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "suggested"),
    [
        ("torchvision:resnet5", "torchvision:resnet50"),
        ("torchvision:mobilenet_v3_smal", "torchvision:mobilenet_v3_small"),
        ("timm:mobilenetv3_smal_100", "timm:mobilenetv3_small_100"),
    ],
)
def test_unknown_library_name_suggests_the_nearest(arch: str, suggested: str) -> None:
    with pytest.raises(KDSearchError) as err:
        nets.check_arch(arch, "teacher.arch")
    line = _one_line(err.value)
    assert line.startswith(f"teacher.arch: unknown '{arch}'; did you mean '{suggested}'?")
    with pytest.raises(KDSearchError, match="did you mean"):
        nets.create(arch)


def test_a_detection_model_is_not_a_classifier() -> None:
    with pytest.raises(KDSearchError, match="unknown 'torchvision:fasterrcnn_resnet50_fpn'"):
        nets.check_arch("torchvision:fasterrcnn_resnet50_fpn")


def test_an_unknown_zoo_name_points_at_the_libraries() -> None:
    with pytest.raises(KDSearchError) as err:
        nets.check_arch("resnet50", "student.arch")
    assert "did you mean 'resnet56'?" in _one_line(err.value)
    assert "torchvision:NAME or timm:NAME" in str(err.value)
    assert "torchvision:resnet50" not in nets.names()  # the zoo's list stays the zoo


def test_torchvision_kwargs_are_the_builders_and_its_classes() -> None:
    resnet = nets.kwarg_names("torchvision:resnet50")
    assert {"weights", "zero_init_residual", "width_per_group", "groups"} <= set(resnet)
    assert "num_classes" not in resnet and "block" not in resnet  # the builder sets it
    assert "dropout" in nets.kwarg_names("torchvision:mobilenet_v3_small")
    model = nets.create("torchvision:resnet18", num_classes=10, zero_init_residual=True)
    assert all(not block.bn2.weight.any() for block in model.layer1)
    with pytest.raises(KDSearchError) as err:
        nets.create("torchvision:resnet18", dropout=0.2)
    line = _one_line(err.value)
    assert "torchvision:resnet18: unknown argument 'dropout'" in line
    assert "zero_init_residual" in line


def test_timm_kwargs_are_its_model_classes() -> None:
    allowed = nets.kwarg_names("timm:resnet10t")
    assert {"pretrained", "drop_rate", "stem_width", "layers"} <= set(allowed)
    assert not {"num_classes", "device", "dtype"} & set(allowed)
    assert nets.create("timm:resnet10t", num_classes=10, drop_rate=0.3).drop_rate == 0.3


def test_dropout_shorthand_sets_each_librarys_rate() -> None:
    """``dropout`` (the search space's shorthand) is timm's ``drop_rate`` and torchvision's
    ``dropout`` where the model has one; a model without any says so in one line."""
    assert "dropout" in nets.kwarg_names("timm:resnet10t")
    assert nets.create("timm:resnet10t", num_classes=10, dropout=0.3).drop_rate == 0.3
    with pytest.raises(KDSearchError) as err:
        nets.create("timm:resnet10t", dropout=0.3, drop_rate=0.1)
    assert "keep one of them" in _one_line(err.value)
    small = nets.create("torchvision:mobilenet_v3_small", num_classes=10, dropout=0.3)
    assert [m.p for m in small.modules() if isinstance(m, torch.nn.Dropout)] == [0.3]
    with pytest.raises(KDSearchError) as err:
        nets.create("torchvision:resnet18", dropout=0.2)
    assert _one_line(err.value).endswith("it has no dropout to set: leave dropout out")
    hint = nets.refused("dropout", ["drop_path_rate", "stem_width"])
    assert hint.endswith("its drop rates are drop_path_rate: set one of those")
    # A spec may search the shorthand on a timm student.
    spec = from_dict(_spec(student={"kwargs": {"dropout": 0.1}}))
    assert spec.student.kwargs == {"dropout": 0.1}


def test_a_value_the_library_refuses_is_one_line() -> None:
    with pytest.raises(KDSearchError) as err:
        nets.create("torchvision:resnext50_32x4d", groups=8)
    assert "torchvision:resnext50_32x4d: cannot be built" in _one_line(err.value)


@pytest.mark.parametrize(
    "arch", ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:resnet10t"]
)
def test_num_classes_is_set(arch: str, one_torch_thread: None) -> None:
    assert nets.create(arch, num_classes=7).eval()(X).shape == (2, 7)


# --- pretrained weights and heads -----------------------------------------------------------


def _cached_weights(home: Path, name: str) -> dict[str, torch.Tensor]:
    """A file where torch's hub cache keeps ``name``'s DEFAULT weights, as if downloaded."""
    weights = models.get_model_weights(name).DEFAULT
    torch.manual_seed(0)
    state = trained_like(models.get_model(name, num_classes=1000)).state_dict()
    path = home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_cached_weights_load_and_another_class_count_gets_a_new_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _cached_weights(tmp_path, "mobilenet_v3_small")
    caplog.set_level(logging.INFO, logger="kdsearch")
    model = nets.create("torchvision:mobilenet_v3_small", num_classes=10, weights="DEFAULT")
    assert model.classifier[3].out_features == 10
    for key, value in model.state_dict().items():
        if not key.startswith("classifier.3."):
            assert torch.equal(value, state[key]), key
    assert "replaced the 1000-class head of the pretrained weights with a 10-class one" in (
        caplog.text
    )
    caplog.clear()
    same = nets.create("torchvision:mobilenet_v3_small", num_classes=1000, weights="IMAGENET1K_V1")
    assert torch.equal(same.classifier[3].weight, state["classifier.3.weight"])
    assert "replaced" not in caplog.text


def test_unknown_weights_name_suggests_the_nearest() -> None:
    with pytest.raises(KDSearchError) as err:
        nets.create("torchvision:resnet18", weights="IMAGENET1K_V9")
    assert "unknown weights 'IMAGENET1K_V9'; did you mean 'IMAGENET1K_V1'?" in _one_line(err.value)


@pytest.mark.parametrize(
    ("arch", "head"), [("timm:resnet10t", "fc"), ("cnn5", "fc2"), ("torchvision:resnet18", "fc")]
)
def test_replace_head_keeps_the_rest(arch: str, head: str) -> None:
    model = nets.create(arch, num_classes=1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nets.replace_head(model, 1000, 10, arch)
    assert model.eval()(X).shape == (2, 10)
    assert getattr(model, head).out_features == 10
    after = model.state_dict()
    kept = [k for k in before if not k.startswith(f"{head}.")]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)


def test_replace_head_without_such_a_head_is_a_user_error() -> None:
    with pytest.raises(KDSearchError, match="found no linear layer with 1000 outputs"):
        nets.replace_head(nets.create("cnn5", num_classes=10), 1000, 4, "cnn5")


def _run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_weights_that_cannot_be_downloaded_say_how_to_give_a_file(tmp_path: Path) -> None:
    code = (
        "from kdsearch import nets\n"
        "from kdsearch.errors import KDSearchError\n"
        "for arch, kw in [('torchvision:mobilenet_v3_small', {'weights': 'DEFAULT'}),\n"
        "                 ('timm:mobilenetv3_small_050', {'pretrained': True})]:\n"
        "    try:\n"
        "        nets.create(arch, num_classes=10, **kw)\n"
        "        print('built')\n"
        "    except KDSearchError as err:\n"
        "        print(err)\n"
    )
    env = {"TORCH_HOME": str(tmp_path), "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = _run_python(code, tmp_path, {**env, **NO_INTERNET})
    assert proc.returncode == 0, proc.stderr
    # torch announces its download attempt ("Downloading: URL to PATH") on stdout.
    lines = [x for x in proc.stdout.splitlines() if x and not x.startswith("Downloading: ")]
    assert len(lines) == 2, proc.stdout
    archs = ["torchvision:mobilenet_v3_small", "timm:mobilenetv3_small_050"]
    for line, arch in zip(lines, archs, strict=True):
        assert line.startswith(f"{arch}: pretrained weights (")
        assert "cannot be downloaded here" in line
        assert f"kdsearch import-checkpoint FILE --arch {arch} --num-classes 1000" in line


def test_without_timm_a_timm_name_names_the_extra(kd_home: Path) -> None:
    (kd_home / "spec.yaml").write_text(yaml.safe_dump(_spec()))
    code = (
        "import sys\n"
        "sys.modules['timm'] = None  # as if timm were not installed\n"
        "from kdsearch.cli import main\n"
        "sys.exit(main(['validate', 'spec.yaml']))\n"
    )
    proc = _run_python(code, kd_home)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr.strip())
    assert line.startswith("kdsearch: error: timm:resnet10t: timm is not installed")
    assert "pip install 'kdsearch[timm]'" in line


# --- specs ----------------------------------------------------------------------------------


def test_spec_with_a_torchvision_teacher_and_a_timm_student_validates() -> None:
    space = {
        "student.arch": {
            "type": "categorical",
            "choices": ["timm:resnet10t", "timm:mobilenetv3_small_050"],
        },
        "student.kwargs.drop_rate": {"type": "float", "low": 0.0, "high": 0.5},
    }
    spec = from_dict(
        _spec(
            teacher={"kwargs": {"zero_init_residual": True}},
            student={"kwargs": {"drop_path_rate": 0.1}},
            search={"space": space},
        )
    )
    assert (spec.teacher.arch, spec.student.arch) == ("torchvision:resnet18", "timm:resnet10t")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"teacher": {"arch": "torchvision:resnet5"}}, "teacher.arch: unknown"),
        (
            {"student": {"arch": "torchvision:resnet18", "kwargs": {"dropout": 0.1}}},
            "student.kwargs.dropout: torchvision:resnet18 takes no argument 'dropout'",
        ),
        (
            {
                "search": {
                    "space": {
                        "student.arch": {
                            "type": "categorical",
                            "choices": ["timm:resnet10t", "torchvision:mobilenet_v3_smal"],
                        }
                    }
                }
            },
            "did you mean 'torchvision:mobilenet_v3_small'?",
        ),
    ],
)
def test_spec_with_a_bad_library_name_or_kwarg_is_refused(
    over: dict[str, Any], message: str
) -> None:
    with pytest.raises(KDSearchError) as err:
        from_dict(_spec(**over))
    assert message in _one_line(err.value)


def test_a_zoo_spec_imports_no_library(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from kdsearch.config.spec import from_dict\n"
        f"from_dict(json.loads({json.dumps(json.dumps(SYNTHETIC_SPEC))}))\n"
        "print(sorted(m for m in ('timm', 'torchvision.models') if m in sys.modules))\n"
    )
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_bad_library_name_on_the_command_line(cli: CLI, kd_home: Path) -> None:
    bad = _spec(teacher={"arch": "torchvision:rsnet18"})
    (kd_home / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = cli("validate", "bad.yaml")
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr.strip())
    assert line.startswith("kdsearch: error: teacher.arch: unknown 'torchvision:rsnet18'")
    assert "did you mean 'torchvision:resnet18'?" in line


def test_help_says_how_to_name_library_models() -> None:
    parser = build_parser()
    nets_help = parser._subparsers._group_actions[0].choices["nets"].format_help()
    for text in (parser.format_help(), nets_help):
        flat = " ".join(text.split())
        assert "torchvision:NAME" in flat and "timm:NAME" in flat
        assert "pip install 'kdsearch[timm]'" in flat


def test_nets_lists_library_models_matching_a_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    """``kdsearch nets 'timm:resnet1*t'`` builds each match and counts it at the asked size;
    too broad a pattern, or none matching, is one line."""
    from kdsearch import api
    from kdsearch import cli as kdcli

    rows = api.list_nets(4, "timm:resnet1*t", image_size=64)
    assert {r["arch"] for r in rows} >= {"timm:resnet10t", "timm:resnet14t"}
    assert all(r["arch"].startswith("timm:resnet1") and r["arch"].endswith("t") for r in rows)
    ten = next(r for r in rows if r["arch"] == "timm:resnet10t")
    model = nets.create("timm:resnet10t", num_classes=4)
    assert ten["parameters"] == nets.count_parameters(model) and ten["image_size"] == 64
    assert ten["mflops"] == round(nets.forward_flops(model, 64) / 1e6, 1)
    assert ten["mflops"] > 3.5 * api.list_nets(4, "timm:resnet10t")[0]["mflops"]  # 64² vs 32²
    assert [r["arch"] for r in api.list_nets(10, "cnn*")] == ["cnn5"]
    for pattern, says in (("timm:*", "narrow the pattern"), ("timm:nosuch*", "no network")):
        assert kdcli.main(["nets", pattern]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


# --- checkpoints ----------------------------------------------------------------------------


def test_import_checkpoint_of_a_torchvision_state_dict(cli: CLI, kd_home: Path) -> None:
    torch.manual_seed(0)
    model = trained_like(nets.create("torchvision:mobilenet_v3_small", num_classes=10))
    src, out = kd_home / "mobilenet.pth", kd_home / "models" / "mobilenet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, src)
    arch = "torchvision:mobilenet_v3_small"
    proc = cli("import-checkpoint", str(src), "--arch", arch, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "imagenet normalization" in proc.stdout
    ckpt = load_checkpoint(out)
    assert (ckpt["arch"], ckpt["num_classes"]) == (arch, 10)
    mean, std = NAMED["imagenet"]
    assert ckpt["normalization"] == {"mean": list(mean), "std": list(std)}
    _same_function(model, load_model(out))


def test_import_a_timm_state_dict(kd_home: Path) -> None:
    torch.manual_seed(0)
    model = trained_like(nets.create("timm:resnet10t", num_classes=10))
    src, out = kd_home / "resnet10t.pth", kd_home / "resnet10t.pt"
    torch.save(model.state_dict(), src)
    import_reference(src, "timm:resnet10t", out, num_classes=10, normalize="cifar10")
    assert load_checkpoint(out)["normalization"]["mean"] == list(NAMED["cifar10"][0])
    _same_function(model, load_model(out))


def test_import_of_another_class_count_is_refused(cli: CLI, kd_home: Path) -> None:
    src, out = kd_home / "mobilenet.pth", kd_home / "models" / "x.pt"
    torch.save(models.get_model("mobilenet_v3_small", num_classes=1000).state_dict(), src)
    proc = cli(
        "import-checkpoint", str(src), "--arch", "torchvision:mobilenet_v3_small",
        "--num-classes", "10", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr.strip())
    assert line.startswith("kdsearch: error: import-checkpoint:")
    assert "shape (2): classifier.3.weight (1000, 1024) vs (10, 1024)" in line
    assert not out.exists()


def test_checkpoint_round_trip_loads_no_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A student trained from ``weights: DEFAULT`` loads from its file, never downloading."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    arch = "torchvision:mobilenet_v3_small"
    model = trained_like(nets.create(arch, num_classes=10))
    path = tmp_path / "student.pt"
    save_model(
        path,
        model,
        arch=arch,
        kwargs={"weights": "DEFAULT", "dropout": 0.1},
        num_classes=10,
        dataset={"name": "synthetic", "options": {}},
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    _same_function(model, load_model(path))
    assert not (tmp_path / "hub").exists()


# --- what the search measures and distills --------------------------------------------------


def test_cost_columns_of_a_library_student(one_torch_thread: None) -> None:
    model = nets.create("torchvision:resnet18", num_classes=1000)
    cost = nets.measure(model, (3, 32, 32), torch.device("cpu"), runs=1)
    assert cost.student_params == 11_689_512  # torchvision's documented count
    # torchvision documents 1.814 G multiply-adds at 224 px; at 32 px every feature map is
    # 7x7 times smaller, except the classifier's input (pooled to one vector at any size).
    macs, fc = models.get_model_weights("resnet18").DEFAULT.meta["_ops"] * 1e9, 512 * 1000
    assert cost.student_flops == pytest.approx(2 * ((macs - fc) / 49 + fc), rel=0.001)
    assert cost.latency_ms_b1 > 0 and cost.latency_ms_b256 > 0
    assert cost.latency_device == "cpu"


def test_fitnets_hooks_by_torchvision_layer_names(one_torch_thread: None) -> None:
    teacher = nets.create("torchvision:resnet18", num_classes=10).eval()
    student = nets.create("timm:resnet10t", num_classes=10)
    method = distill.create(
        "fitnets", 4.0, 0.5, {"student_layer": "layer2", "teacher_layer": "layer3"}
    )
    hooks = (
        distill.FeatureHooks(student, method.student_layers(), "student"),
        distill.FeatureHooks(teacher, method.teacher_layers(), "teacher"),
    )
    with torch.no_grad():
        teacher_logits = teacher(X)
    logits = student(X)
    features = [h.take() for h in hooks]
    assert features[1]["layer3"].shape == (2, 256, 2, 2)
    method.build(*features)
    batch = distill.Batch(logits, teacher_logits, torch.tensor([0, 1]), *features)
    terms = method(batch, epoch=0)
    terms["hint"].backward()
    assert torch.isfinite(terms["hint"]) and student.conv1[0].weight.grad is not None
    with pytest.raises(KDSearchError) as err:
        distill.FeatureHooks(teacher, ["layr3"], "teacher")
    assert "teacher layer: unknown 'layr3'; did you mean 'layer3'?" in _one_line(err.value)


# --- fine-tuning from another class count ---------------------------------------------------


def test_init_from_another_class_count_replaces_the_head(
    kd_home: Path, write_spec: Callable[..., Path], cli: CLI
) -> None:
    arch = "torchvision:resnet18"
    torch.manual_seed(0)
    imagenet = trained_like(nets.create(arch, num_classes=1000))
    init = kd_home / "models" / "resnet18-imagenet.pt"
    mean, std = NAMED["imagenet"]
    save_model(
        init,
        imagenet,
        arch=arch,
        kwargs={},
        num_classes=1000,
        dataset={"name": "imagenet", "options": {}},
        mean=mean,
        std=std,
    )
    spec = write_spec(
        {
            "teacher": {"arch": arch, "kwargs": None},
            "teacher_train": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 1.0e-7}},
        },
        name="tune",
    )
    out = kd_home / "models" / "tuned.pt"
    proc = cli("train-teacher", str(spec), "--init", str(init), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    replaced = [line for line in proc.stderr.splitlines() if "replaced" in line]
    assert len(replaced) == 1, proc.stderr
    assert replaced[0].endswith(
        "--init: replaced the 1000-class head of torchvision:resnet18 with a 4-class one"
    )
    tuned = load_checkpoint(out)
    assert tuned["num_classes"] == 4 and tuned["state_dict"]["fc.weight"].shape == (4, 512)
    assert tuned["normalization"] == {"mean": list(mean), "std": list(std)}
    w = "layer1.0.conv1.weight"
    torch.testing.assert_close(tuned["state_dict"][w], imagenet.state_dict()[w], rtol=0, atol=1e-4)
    # Another arch stays an error: a head is all that may differ.
    other = cli("train-teacher", str(write_spec()), "--init", str(init), "--out", "models/x.pt")
    assert other.returncode == 2
    line = _one_line(other.stderr.strip())
    assert "--init:" in line and "holds a torchvision:resnet18, but this run trains a cnn5" in line
    assert not (kd_home / "models" / "x.pt").exists()
