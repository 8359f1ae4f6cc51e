"""Exporting a checkpoint to ONNX or TorchScript, checked against it before it is kept.

The export is written to a temporary file, loaded back the way a user loads it
(:func:`~kdsearch.deploy.student.load_student`: onnxruntime or ``torch.jit.load``), and run on
the same batch as the checkpoint's own network: only when every logit agrees within the
tolerance is the file renamed into place: ``|export - checkpoint| <= tol * (1 + |checkpoint|)``
for every logit, ``tol`` 1e-4 by default (float32 sums taken in another order differ by about
1e-7 of the logits' size, and an untrained net's logits reach the hundreds). The batch is the
user's images through the stored preprocessing, or seeded random pixels when none are given.
Both networks' batch-1 latency on this machine's CPU is measured on the way.

ONNX goes through torch's ``torch.export``-based exporter (the maintained one since torch
2.9; the TorchScript-based one warns that it will be removed), with a dynamic batch axis;
TorchScript through ``torch.jit.trace``, which every zoo, torchvision and timm network in
kdsearch traces without data-dependent control flow.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdsearch.deploy.preprocess import Preprocess
from kdsearch.deploy.student import INPUT, META_KEY, OUTPUT, load_student, metadata
from kdsearch.errors import KDSearchError

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
#: How far an export's logits may stray from the checkpoint's, absolutely and relative to
#: the logit's size (torch.allclose's atol and rtol).
TOLERANCE = 1e-4


def _onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, meta: str) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it; fail here with the fix)
    except ImportError:
        raise KDSearchError(
            "export-model --format onnx needs onnx and onnxscript: pip install 'kdsearch[export]'"
        ) from None
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
    graph = onnx.load(str(out))
    onnx.helper.set_model_props(graph, {META_KEY: meta})
    onnx.save(graph, str(out))


def _torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path, meta: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={f"{META_KEY}.json": meta})


def _latency_ms(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Median wall time of one batch-1 forward pass, after warm-up."""
    one = x[:1]
    with torch.inference_mode():
        for _ in range(3):
            model(one)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            model(one)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 4)


def check_batch(pre: Preprocess, images: list[Path] | None, n: int = 8) -> torch.Tensor:
    """The user's images as the network sees them, or ``n`` images of seeded random pixels."""
    if images:
        return pre.batch(images)
    gen = torch.Generator().manual_seed(0)
    size = (n, 3, pre.image_size, pre.image_size)
    return pre.normalize(torch.randint(0, 256, size, generator=gen, dtype=torch.uint8))


def export(
    checkpoint: Path,
    fmt: str,
    out: Path,
    images: list[Path] | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Write ``checkpoint``'s network to ``out`` as ``fmt`` (onnx or torchscript), checked;
    returns what was checked and measured (keys as ``export-model --json``)."""
    from kdsearch.training.model_files import load_checkpoint, model_of

    if fmt not in FORMATS:
        raise KDSearchError(f"export-model: unknown format {fmt!r} (choose from onnx, torchscript)")
    if not out.parent.is_dir():
        raise KDSearchError(f"export-model: folder {out.parent} does not exist; create it")
    ckpt = load_checkpoint(checkpoint, "export-model")
    # The writer gets its own copy: whatever it does to the network (a mode, a fused layer)
    # cannot reach the reference the export is checked against.
    model, reference = model_of(ckpt), model_of(ckpt)
    meta = metadata(ckpt)
    x = check_batch(Preprocess.from_checkpoint(ckpt), images)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        write = _onnx if fmt == "onnx" else _torchscript
        write(model, x[:2], tmp, json.dumps(meta))
        exported = load_student(tmp).model
        with torch.inference_mode():
            got, want = exported(x), reference(x)
        diff = (got - want).abs().max().item()
        if not torch.allclose(got, want, rtol=tolerance, atol=tolerance):
            raise KDSearchError(
                f"export-model: the {fmt} export's logits differ from the checkpoint's by up "
                f"to {diff:.2e} (logits up to {want.abs().max().item():.3g}; tolerance "
                f"{tolerance:g}, absolute and relative); nothing written; report this network"
            )
        latency = {"checkpoint": _latency_ms(reference, x), fmt: _latency_ms(exported, x)}
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "checkpoint": str(checkpoint),
        "format": fmt,
        "path": str(out),
        "bytes": out.stat().st_size,
        "arch": meta["arch"],
        "classes": meta["classes"],
        "preprocess": meta["preprocess"],
        "checked_on": f"{len(x)} {'images' if images else 'random-pixel images'}",
        "max_abs_diff": diff,
        "max_abs_logit": want.abs().max().item(),
        "tolerance": tolerance,
        "latency_ms_b1": latency,
    }
