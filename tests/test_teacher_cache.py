"""The teacher cache: equal to the online teacher, seeded, built once under races, self-healing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kdsearch.config import spec as specs
from kdsearch.config.spec import merge
from kdsearch.data import views
from kdsearch.data.normalization import NAMED
from kdsearch.distill import kd_loss
from kdsearch.training import teacher
from kdsearch.training.experiment import Context
from kdsearch.training.teacher import CachedTeacher, OnlineTeacher, build_or_load, compute_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


#: 60 training images (48 after validation): 48 × 162 views stay quick on a CPU.
SMALL = {"dataset": {"options": {"n_train": 60}}}


def _setup(
    write_spec: Callable[..., Path], overrides: dict[str, Any]
) -> tuple[specs.Spec, Context, torch.nn.Module]:
    spec = specs.load(write_spec({**SMALL, **overrides}))
    ctx = Context.load(spec, "cpu", with_teacher=False)
    model = teacher.load_teacher(spec, ctx.num_classes)
    return spec, ctx, model


def _online(model: torch.nn.Module, ctx: Context, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The teacher run on images ``x`` under views ``v``, as the online path does."""
    online = OnlineTeacher(model, ctx.data.augment)
    return online.logits(torch.arange(len(x)), None, views.apply(x, v))


def _assert_fp16_close(cached: torch.Tensor, online: torch.Tensor) -> None:
    """Equal within fp16 storage rounding (2^-11 relative), not merely similar."""
    scale = max(1.0, online.abs().max().item())
    torch.testing.assert_close(cached, online, rtol=2e-3, atol=1e-3 * scale)


def test_cached_loss_equals_online_loss(write_spec: Callable[..., Path]) -> None:
    """All-views cache: the loss from cached logits equals the loss from the online teacher."""
    spec, ctx, model = _setup(write_spec, {"distill": {"teacher_cache": "all_views"}})
    d = ctx.data
    cached, path = build_or_load(model, d, spec)
    assert path.parent == Path(os.environ["KDSEARCH_HOME"]) / "models" / "cache"
    assert path.is_file()
    n = len(d.train)
    assert cached.table.shape == (n, 162, d.num_classes)
    assert cached.table.dtype == torch.float16
    assert torch.equal(cached.view_ids, torch.arange(162).expand(n, -1))

    # One image under all 162 views, looked up slot by slot.
    i = 5
    online_all = _online(model, ctx, d.train.x[i].expand(162, -1, -1, -1), torch.arange(162))
    _assert_fp16_close(cached.table[i].float(), online_all)

    # A training batch as the loop draws it: views from the cache's own draw.
    gen = torch.Generator().manual_seed(11)
    idx = torch.randperm(n, generator=gen)[:32]
    view_idx, token = cached.draw_views(idx, gen)
    assert len(set(view_idx.tolist())) > 10  # really different views per image
    x = views.apply(d.train.x[idx], view_idx)
    from_cache = cached.logits(idx, token, x)
    online = OnlineTeacher(model, d.augment).logits(idx, None, x)
    _assert_fp16_close(from_cache, online)
    student = torch.randn(32, d.num_classes, generator=gen) * 2
    labels = d.train.y[idx]
    for temperature in (1.0, 4.0, 20.0):
        for alpha in (0.5, 1.0):
            a = kd_loss(student, from_cache, labels, temperature, alpha).item()
            b = kd_loss(student, online, labels, temperature, alpha).item()
            assert a == pytest.approx(b, rel=1e-2, abs=1e-4), (temperature, alpha)


def test_compute_logits_matches_teacher_per_slot(write_spec: Callable[..., Path]) -> None:
    """``compute_logits`` fills slot j of image i with the teacher's logits on view[i, j]."""
    _, ctx, model = _setup(write_spec, {})
    d = ctx.data
    slots = torch.stack([torch.arange(len(d.train)) % 162, (torch.arange(len(d.train)) * 7) % 162])
    slots = slots.T.contiguous()
    table = compute_logits(model, d, slots, batch=7)  # batch not dividing N
    for j in range(2):
        _assert_fp16_close(table[:, j].float(), _online(model, ctx, d.train.x, slots[:, j]))


def test_sampled_views_are_reproducible(write_spec: Callable[..., Path]) -> None:
    """``sampled:K`` draws K distinct views per image from ``train.seed``: same seed, same views."""
    spec, ctx, model = _setup(write_spec, {"distill": {"teacher_cache": "sampled:4"}})
    d = ctx.data
    first, path = build_or_load(model, d, spec)
    n = len(d.train)
    assert first.view_ids.shape == (n, 4) and first.table.shape == (n, 4, d.num_classes)
    assert all(len(set(row)) == 4 for row in first.view_ids.tolist())
    assert ((first.view_ids >= 0) & (first.view_ids < 162)).all()
    assert len({tuple(row) for row in first.view_ids.tolist()}) > n // 2  # per image, not shared
    for j in range(4):  # each slot holds the teacher's logits for the view it names
        _assert_fp16_close(
            first.table[:, j].float(), _online(model, ctx, d.train.x, first.view_ids[:, j])
        )

    path.unlink()
    again, again_path = build_or_load(model, d, spec)
    assert again_path == path
    assert torch.equal(again.view_ids, first.view_ids)
    assert torch.equal(again.table, first.table)

    other_spec = spec.with_overrides({"train.seed": 1})
    other, other_path = build_or_load(model, d, other_spec)
    assert other_path != path
    assert not torch.equal(other.view_ids, first.view_ids)

    # The training loop's draw from the cache is seeded by its generator, too.
    idx = torch.arange(n)
    a = first.draw_views(idx, torch.Generator().manual_seed(3))
    b = again.draw_views(idx, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[0].tolist()) <= set(first.view_ids.flatten().tolist())


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({"distill": {"teacher_cache": "sampled:3"}}, True),
        # At least as many stored views as epochs (4) matched the online teacher.
        ({"distill": {"teacher_cache": "sampled:4"}}, False),
        ({"distill": {"teacher_cache": "all_views"}}, False),
        ({"distill": {"teacher_cache": "none"}}, False),
        # Without augmentation an image has one view, and one sampled view is all of them.
        ({"distill": {"teacher_cache": "sampled:1"}, "dataset": {"augment": False}}, False),
    ],
)
def test_a_sampled_cache_that_narrows_augmentation_is_named(
    write_spec: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, Any],
    warned: bool,
) -> None:
    """sampled:K with K under train.epochs trains distilled students on K views per image,
    baselines on all: say so."""
    spec = specs.load(write_spec(merge(SMALL, overrides)))
    ctx = Context.load(spec, "cpu", with_teacher=False)
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        teacher.teacher_logits(spec, ctx.data)
    lines = [r.getMessage() for r in caplog.records if "augmented views" in r.getMessage()]
    if warned:
        assert lines == [
            "distill.teacher_cache sampled:3: distilled students train on 3 of the 162 augmented "
            "views of each image over 4 epochs, baselines on all of them, which cost up to 2 "
            "points on CIFAR-10 (docs/cifar10.md); use sampled:K with K at least train.epochs, "
            "all_views or none"
        ]
    else:
        assert lines == []


def test_cache_key_depends_on_inputs(write_spec: Callable[..., Path]) -> None:
    """Another view mode or other teacher weights get another cache file."""
    spec, ctx, model = _setup(write_spec, {"distill": {"teacher_cache": "sampled:4"}})
    base = teacher.cache_path(model, ctx.data, spec)
    assert teacher.cache_path(model, ctx.data, spec) == base
    assert teacher.cache_path(model, ctx.data, spec.with_overrides({"lr": 0.1})) == base
    all_views = spec.with_overrides({"distill.teacher_cache": "all_views"})
    assert teacher.cache_path(model, ctx.data, all_views) != base
    with torch.no_grad():
        model.net.fc2.bias.add_(1e-3)
    changed = teacher.cache_path(model, ctx.data, spec)
    assert changed != base
    with torch.no_grad():  # the teacher's own normalization is part of the key
        model.std.mul_(2)
    assert teacher.cache_path(model, ctx.data, spec) not in (base, changed)


def _cache_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models" / "cache").iterdir() if p.suffix != ".lock")


@pytest.mark.slow
def test_two_processes_build_one_cache(kd_home: Path, write_spec: Callable[..., Path]) -> None:
    """Two ``kdsearch cache-teacher`` at once: both succeed, exactly one builds, one file."""
    path = write_spec({"distill": {"teacher_cache": "all_views"}})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KDSEARCH_HOME": str(kd_home)}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "kdsearch", "cache-teacher", str(path), "--device", "cpu"]
    procs = [
        subprocess.Popen(
            cmd, cwd=kd_home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "teacher cache" in out
    builders = [err for _, err in outs if "building teacher cache" in err]
    assert len(builders) == 1, [err for _, err in outs]
    files = _cache_files(kd_home)
    assert len(files) == 1 and files[0].startswith("teacher-") and files[0].endswith(".pt"), files
    assert files[0] in outs[0][0] and files[0] in outs[1][0]
    blob = teacher._read(kd_home / "models" / "cache" / files[0])
    assert blob is not None and blob["logits"].shape[1] == 162


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_logit_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    logits = torch.load(path, weights_only=True)["logits"]
    at = raw.find(logits.numpy().tobytes()[:64])
    assert at >= 0, "logits not found in the file"
    for k in range(at + 16, at + 24):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))


def _flip_view_id_bytes(path: Path) -> None:
    """Damage the stored view indices (the table's other half), not the logits."""
    raw = bytearray(path.read_bytes())
    view_ids = torch.load(path, weights_only=True)["view_ids"]
    at = raw.find(view_ids.numpy().tobytes()[:64])
    assert at >= 0, "view_ids not found in the file"
    raw[at + 3] ^= 0xFF  # the first image's first view index becomes ~2^24
    path.write_bytes(bytes(raw))


def _tamper(path: Path) -> None:
    """A loadable file whose logits no longer match the stored checksum."""
    blob = torch.load(path, weights_only=True)
    blob["logits"][0, 0, 0] += 1
    torch.save(blob, path)


@pytest.mark.parametrize("damage", [_truncate, _flip_logit_bytes, _flip_view_id_bytes, _tamper])
def test_corrupt_cache_is_rebuilt(
    write_spec: Callable[..., Path], caplog: pytest.LogCaptureFixture, damage: Callable
) -> None:
    """A damaged cache is never used: a warning is logged and the file is rebuilt, valid."""
    spec, ctx, model = _setup(write_spec, {"distill": {"teacher_cache": "sampled:2"}})
    good, path = build_or_load(model, ctx.data, spec)
    damage(path)
    detected = teacher._read(path) is None
    assert detected, f"{damage.__name__}: the damaged cache was read as valid"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdsearch.training.teacher"):
        rebuilt, again = build_or_load(model, ctx.data, spec)
    assert again == path
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "corrupt" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()
    assert torch.equal(rebuilt.table, good.table)
    assert torch.equal(rebuilt.view_ids, good.view_ids)
    blob = torch.load(path, weights_only=True)
    assert blob["checksum"] == teacher._checksum(blob["logits"], blob["view_ids"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdsearch.training.teacher"):
        build_or_load(model, ctx.data, spec)
    assert not caplog.records  # a valid cache loads silently


def test_cached_teacher_lookup() -> None:
    """``CachedTeacher`` returns the row of each image at the slot it drew, as float32."""
    table = torch.arange(3 * 4 * 2, dtype=torch.float16).view(3, 4, 2)
    view_ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]])
    cached = CachedTeacher(table, view_ids)
    idx = torch.tensor([2, 0, 2])
    v, slot = cached.draw_views(idx, torch.Generator().manual_seed(0))
    assert torch.equal(v, view_ids[idx, slot])
    out = cached.logits(idx, slot, torch.empty(0))
    assert out.dtype == torch.float32
    assert torch.equal(out, table[idx, slot].float())


def _with_normalization(path: Path, name: str) -> None:
    """Rewrite a teacher checkpoint as if it had been trained with other input constants."""
    ckpt = torch.load(path, weights_only=True)
    mean, std = NAMED[name]
    ckpt["normalization"] = {"mean": list(mean), "std": list(std)}
    torch.save(ckpt, path)


def test_teacher_normalizes_with_its_own_constants(
    kd_home: Path, write_spec: Callable[..., Path]
) -> None:
    """Online and cached, the teacher sees its input normalized as its checkpoint says, not as
    the student's data set is."""
    _with_normalization(kd_home / "models" / "teacher.pt", "imagenet")
    spec, ctx, model = _setup(write_spec, {"distill": {"teacher_cache": "sampled:2"}})
    d = ctx.data
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in NAMED["imagenet"])
    assert not torch.allclose(d.mean, mean)  # the student's constants are the data set's
    x = views.apply(d.train.x, torch.full((len(d.train),), views.IDENTITY))
    with torch.no_grad():
        own = model.net(views.normalize(x, mean, std))
        students = model.net(d.prepare(x))
    assert (own - students).abs().max() > 0.1
    online = OnlineTeacher(model, d.augment).logits(torch.arange(len(x)), None, x)
    torch.testing.assert_close(online, own)
    cached, _ = build_or_load(model, d, spec)
    for j in range(2):
        v = cached.view_ids[:, j]
        with torch.no_grad():
            expected = model.net(views.normalize(views.apply(d.train.x, v), mean, std))
        _assert_fp16_close(cached.table[:, j].float(), expected)
    # The worker's own path (Context.load -> teacher_logits) gives that same cache.
    through = Context.load(spec, "cpu").teacher
    assert torch.equal(through.view_ids, cached.view_ids)
    assert torch.equal(through.table, cached.table)


def test_online_and_cached_distillation_train_the_same_student(
    kd_home: Path, write_spec: Callable[..., Path]
) -> None:
    """Through the training loop: the online teacher gets the same (uint8) views as the cache
    was built from, so both runs end with the same student (up to fp16 cache rounding)."""
    from kdsearch.training.experiment import fit_student

    _with_normalization(kd_home / "models" / "teacher.pt", "imagenet")
    states = []
    for mode in ("none", "all_views"):
        spec = specs.load(
            write_spec({**SMALL, "train": {"epochs": 1}, "distill": {"teacher_cache": mode}})
        )
        ctx = Context.load(spec, "cpu")
        out = kd_home / "models" / f"student-{mode}.pt"
        fit_student(ctx, spec, out, progress=False)
        states.append(torch.load(out, weights_only=True)["state_dict"])
    # One Adam step (48 training images, one batch) moves each weight by about lr times the
    # sign of its gradient, so the runs differ only where a sign differs. Weights only, by the
    # share of elements that moved: fp16 rounding of the cache flips a few near-zero gradients
    # (under 0.1 % of any tensor, which ones depending on the thread count; every BN-cancelled
    # bias), a teacher fed the un-augmented images instead of the views flips 1.5-4 % of each
    # conv and linear weight.
    weights = [k for k in states[0] if k.endswith("weight")]
    moved = {k: ((states[1][k] - states[0][k]).abs() > 1e-4).float().mean().item() for k in weights}
    assert max(moved.values()) < 0.01, moved


#: Random-resized crops at 32 px from images stored at 40 px (the synthetic teacher is a 32 px
#: cnn5); a sampled cache is the only cache such crops can have.
CROPS = {
    "dataset": {"image_size": 32, "storage_size": 40, "crop": "random_resized"},
    "distill": {"teacher_cache": "sampled:3"},
}


def test_sampled_random_resized_crops_are_cached_with_their_boxes(
    write_spec: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Each slot stores its crop box and flip; the teacher's logits on the crop rebuilt from
    that box equal the cached ones (within fp16 storage rounding), and the boxes the loop draws
    from the cache are exactly the stored ones, so the student trains on the teacher's crops."""
    spec, ctx, model = _setup(write_spec, CROPS)
    d = ctx.data
    with caplog.at_level(logging.INFO, logger="kdsearch.training.teacher"):
        cached, _ = build_or_load(model, d, spec)
    n = len(d.train)
    assert f"({n} images x 3 views)" in caplog.text  # the log line formats with boxes too
    assert cached.view_ids.shape == (n, 3, 5) and cached.table.shape == (n, 3, d.num_classes)
    assert len({tuple(b) for b in cached.view_ids[:, 0].tolist()}) > n // 2  # per image
    pixels = d.train.chunk(0, n)
    for j in range(3):
        x = d.augment.apply(pixels, cached.view_ids[:, j])
        online = OnlineTeacher(model, d.augment).logits(torch.arange(n), None, x)
        _assert_fp16_close(cached.table[:, j].float(), online)
        assert (cached.table[:, j].float() - online.half().float()).abs().max() < 1e-2
    idx = torch.arange(n)
    boxes, slot = cached.draw_views(idx, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, cached.view_ids[idx, slot])
    x = d.augment.apply(pixels, boxes)
    torch.testing.assert_close(
        cached.logits(idx, slot, x),
        OnlineTeacher(model, d.augment).logits(idx, None, x).half().float(),
        atol=1e-2,
        rtol=0,
    )


def test_a_crop_cache_depends_on_the_crop_settings(write_spec: Callable[..., Path]) -> None:
    """Another min_scale or stored size draws other boxes, so it is another cache file."""
    spec, ctx, model = _setup(write_spec, CROPS)
    base = teacher.cache_key(model, ctx.data, spec)
    for change in ({"min_scale": 0.5}, {"storage_size": 44}):
        other = specs.load(write_spec(merge({**SMALL, **CROPS}, {"dataset": change}), "o"))
        other_ctx = Context.load(other, "cpu", with_teacher=False)
        assert teacher.cache_key(model, other_ctx.data, other) != base, change
