"""Top-k class names for image files, from any form of a student."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdsearch.deploy.student import Student

#: Images per forward pass: bounded memory for any number of files.
BATCH = 64


def predict(student: Student, images: list[Path], top_k: int = 5) -> list[dict[str, Any]]:
    """For each image, its ``top_k`` classes with their softmax probabilities, best first."""
    k = min(top_k, len(student.classes))
    out: list[dict[str, Any]] = []
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        with torch.inference_mode():
            probs = torch.softmax(student.model(student.transform.batch(chunk)).float(), dim=1)
        top = probs.topk(k, dim=1)
        for path, p, i in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            out.append(
                {
                    "image": str(path),
                    "top": [
                        {"class": student.classes[c], "index": c, "probability": q}
                        for c, q in zip(i, p, strict=True)
                    ],
                }
            )
    return out


def text(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per image: the file, then each class with its probability."""
    return "\n".join(
        f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        for r in rows
    )
