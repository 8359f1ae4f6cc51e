"""Final numbers for a checkpoint: test accuracy, per-class accuracy, confusion matrix, size.

What the reference spread over evaluate.py and count_model_size.py, for any kdsearch
checkpoint, on the test set of the data set it was trained on (or of a given spec).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdsearch import nets
from kdsearch.config.spec import DatasetSpec
from kdsearch.data import augment, datasets
from kdsearch.errors import KDSearchError
from kdsearch.training.loop import DeviceData, predict, resolve_device
from kdsearch.training.model_files import input_normalization, load_checkpoint, model_of


def evaluate_checkpoint(
    path: Path, spec_path: str | None = None, device: str | None = None
) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if spec_path:
        from kdsearch.config import spec as specs

        dataset = specs.load(spec_path).dataset
    else:
        meta = ckpt.get("dataset", {})
        sizes = {k: meta[k] for k in datasets.SIZE_KEYS if k in meta}
        dataset = DatasetSpec(
            name=meta.get("name", "cifar10"),
            root=meta.get("root", DatasetSpec.root),
            options=meta.get("options", {}),
            **sizes,
        )
    dev = resolve_device(device or "auto")
    splits = datasets.load(dataset)
    if ckpt["num_classes"] != splits.num_classes:
        raise KDSearchError(
            f"{path}: the model has {ckpt['num_classes']} classes, the data set {dataset.name} "
            f"has {splits.num_classes}; pass the --spec of the data set it was trained on"
        )
    # The network sees its input normalized as it was trained, whatever the data set's are.
    mean, std = input_normalization(ckpt)
    view = augment.for_dataset(replace(dataset, augment=False))
    data = DeviceData.from_splits(replace(splits, mean=mean, std=std), dev, view)
    model = model_of(ckpt).to(dev)
    logits = predict(model, data, data.test)
    y = data.test.y
    pred = logits.argmax(1)
    k = splits.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_(
        (y.cpu(), pred.cpu()), torch.ones(len(y), dtype=torch.long), accumulate=True
    )
    per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1)).tolist()
    params = nets.count_parameters(model)
    size_bytes = sum(t.numel() * t.element_size() for t in ckpt["state_dict"].values())
    return {
        "checkpoint": str(path),
        "arch": ckpt["arch"],
        "dataset": dataset.name,
        "test_images": len(y),
        "test_accuracy": (pred == y).float().mean().item(),
        "classes": list(splits.classes or ckpt.get("classes") or range(k)),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "parameters": params,
        "size_mb": round(size_bytes / 2**20, 3),
        "metrics": ckpt.get("metrics", {}),
        "threads": torch.get_num_threads(),  # CPU threads it ran with (--threads)
    }


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['checkpoint']}: {r['arch']} on {r['dataset']} test set ({r['test_images']} images)",
        f"test accuracy   {r['test_accuracy']:.4f}",
        f"parameters      {r['parameters']:,} ({r['size_mb']} MB)",
        "per-class accuracy: "
        + " ".join(
            f"{c}:{a:.3f}" for c, a in zip(r["classes"], r["per_class_accuracy"], strict=True)
        ),
        "confusion matrix (rows: true class, columns: predicted):",
    ]
    lines += [" ".join(f"{v:5d}" for v in row) for row in r["confusion_matrix"]]
    return "\n".join(lines)
