"""kdsearch's model checkpoints, and importing the 2018 reference's.

A kdsearch checkpoint is a plain dict (weights plus metadata: arch, kwargs, num_classes,
dataset, normalization, metrics) that loads with ``torch.load(weights_only=True)``, so opening
a file someone sent you never runs code. Writes go to a temporary file that is renamed into
place, so a killed process never leaves half a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch import nets
from kdsearch.data import normalization
from kdsearch.errors import KDSearchError
from kdsearch.files import atomic_save, safe_load

FORMAT = "kdsearch-model"
FORMAT_VERSION = 1


def save_model(
    path: Path,
    model: nn.Module,
    *,
    arch: str,
    kwargs: dict[str, Any],
    num_classes: int,
    dataset: dict[str, Any],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    metrics: dict[str, Any] | None = None,
    classes: tuple[str, ...] | None = None,
) -> None:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    atomic_save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "kwargs": dict(kwargs),
            "num_classes": num_classes,
            "dataset": dataset,
            "normalization": {"mean": list(mean), "std": list(std)},
            "metrics": dict(metrics or {}),
            "classes": list(classes) if classes else None,
            "state_dict": state,
        },
        path,
    )


def load_checkpoint(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """A kdsearch checkpoint's dict, checked for its format."""
    ckpt = safe_load(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise KDSearchError(
            f"{what}: {path} is not a kdsearch checkpoint; import it first with "
            "`kdsearch import-checkpoint PATH --arch ARCH --out models/NAME.pt`"
        )
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise KDSearchError(f"{what}: {path} was written by a newer kdsearch; upgrade kdsearch")
    return ckpt


def update_metrics(path: Path, **metrics: Any) -> None:
    """Add measured metrics (e.g. test accuracy) to a checkpoint's metadata."""
    ckpt = load_checkpoint(path)
    ckpt["metrics"].update(metrics)
    atomic_save(ckpt, path)


def load_model(path: str | Path, what: str = "checkpoint") -> nn.Module:
    """The network a kdsearch checkpoint holds, in eval mode on the CPU."""
    return model_of(load_checkpoint(Path(path), what))


def model_of(ckpt: dict[str, Any]) -> nn.Module:
    """The network of a loaded kdsearch checkpoint, in eval mode on the CPU.

    Built without its pretrained-weights argument: the checkpoint holds the weights, and a
    machine without internet must load what one with internet trained.
    """
    arch = ckpt["arch"]
    kwargs = nets.without_weights(arch, ckpt["kwargs"])
    model = nets.create(arch, num_classes=ckpt["num_classes"], **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def input_normalization(ckpt: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the checkpoint's network expects its input normalized with."""
    norm = ckpt["normalization"]
    return tuple(norm["mean"]), tuple(norm["std"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` or ``nn.DataParallel`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, Any]:
    """Keys without nn.DataParallel's ``module.`` prefix (left as they are if it is absent)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def fill_batch_counts(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Add the ``num_batches_tracked`` buffers torch < 0.4.1 did not save.

    torch itself loads such files (BatchNorm fills them in ``_load_from_state_dict``); they
    only matter for ``momentum=None``, which no kdsearch network uses.
    """
    missing = {
        k: torch.zeros((), dtype=torch.long)
        for k in model.state_dict()
        if k.endswith("num_batches_tracked") and k not in state
    }
    return {**state, **missing}


def mismatch(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 5) -> str | None:
    """A one-line description of how ``state`` fails to fit ``model``, or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = [
        f"{label} ({len(keys)}): {', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    return "; ".join(parts) or None


def default_normalization(arch: str) -> str:
    """What an imported ``arch`` was most likely trained with: torchvision and timm models on
    ImageNet with its constants, the zoo's networks (the reference's) on CIFAR-10."""
    return "imagenet" if nets.is_library(arch) else "cifar10"


def import_reference(
    path: Path,
    arch: str,
    out: Path,
    num_classes: int = 10,
    kwargs: dict[str, Any] | None = None,
    normalize: str | None = None,
) -> nn.Module:
    """Convert a saved state dict (plain, or under ``state_dict``) into a kdsearch checkpoint.

    Reads files saved on CUDA, from ``nn.DataParallel`` (``module.`` keys) and by torch < 0.4.1
    (no ``num_batches_tracked``); other top-level keys (``best_prec1``, ``epoch``,
    ``optim_dict``) are ignored. ``normalize`` names the input normalization the network was
    trained with (default :func:`default_normalization`), stored so every later use feeds it
    the same. Nothing is written unless every key and shape matches ``arch``.
    """
    normalize = normalize or default_normalization(arch)
    mean, std = normalization.parse(normalize, "import-checkpoint --normalization")
    raw = safe_load(path, "import-checkpoint")
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KDSearchError(
            f"import-checkpoint: {path} holds neither a state dict nor a dict with 'state_dict'"
        )
    model = nets.create(arch, num_classes=num_classes, **nets.without_weights(arch, kwargs or {}))
    state = fill_batch_counts(model, strip_prefix(state))
    problem = mismatch(model, state)
    if problem:
        raise KDSearchError(
            f"import-checkpoint: {path} does not fit {arch} with {num_classes} classes: "
            f"{problem}; check --arch and --num-classes"
        )
    model.load_state_dict(state)
    save_model(
        out,
        model,
        arch=arch,
        kwargs=kwargs or {},
        num_classes=num_classes,
        # What `evaluate` without --spec tests on; the normalization above is what matters.
        dataset={"name": "cifar100" if num_classes == 100 else "cifar10", "options": {}},
        mean=mean,
        std=std,
        metrics={"imported_from": str(path)},
    )
    return model.eval()
