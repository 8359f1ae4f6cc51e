"""A shippable student in any of its three forms, loaded the same way.

A kdsearch checkpoint (``best.pt``), an ONNX file and a TorchScript file all load into a
:class:`Student`: a callable network (normalized ``N×3×S×S`` floats in, logits out), the
:class:`~kdsearch.deploy.preprocess.Preprocess` that makes its input from an image, and its
class names. Exports carry that metadata inside the file (ONNX ``metadata_props``,
TorchScript ``extra_files``, both under :data:`META_KEY`), so a deployed file is
self-describing: no spec, sidecar or README prose is needed to use it.

    from kdsearch import load_student
    model, transform, classes, _ = load_student("student.onnx")
    logits = model(transform(PIL.Image.open("dog.jpg")).unsqueeze(0))
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from kdsearch.deploy.preprocess import Preprocess
from kdsearch.errors import KDSearchError

META_KEY = "kdsearch"
META_FORMAT = "kdsearch-student"
META_VERSION = 1
#: The exported graph's input and output names.
INPUT, OUTPUT = "input", "logits"


class Student(NamedTuple):
    """A loaded student: ``model(x)`` gives logits for a batch ``transform`` made."""

    model: Callable[[torch.Tensor], torch.Tensor]
    transform: Preprocess
    classes: list[str]
    meta: dict[str, Any]


def metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What an export carries about the checkpoint it came from."""
    n = int(ckpt["num_classes"])
    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "arch": ckpt["arch"],
        "num_classes": n,
        "classes": list(ckpt.get("classes") or [str(i) for i in range(n)]),
        "preprocess": Preprocess.from_checkpoint(ckpt).to_dict(),
        "metrics": dict(ckpt.get("metrics") or {}),
        "input": INPUT,
        "output": OUTPUT,
    }


def kind(path: Path) -> str:
    """``onnx``, ``torchscript`` or ``checkpoint``, by content: checkpoints and TorchScript
    are zip archives (TorchScript keeps its code and constants beside the tensors), ONNX is
    not. A file that is none of them fails where it is read, with its name."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return "onnx"
    return "torchscript" if any(n.endswith("/constants.pkl") for n in names) else "checkpoint"


class OnnxModel:
    """An ONNX file run by onnxruntime on the CPU, called like a torch module."""

    def __init__(self, path: Path) -> None:
        ort = _onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise KDSearchError(
                f"{path} is neither a kdsearch checkpoint nor an ONNX or TorchScript export "
                f"({first}); pass the file export-model or a search wrote"
            ) from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {INPUT: x.detach().cpu().numpy()}
        return torch.from_numpy(self.session.run([OUTPUT], feed)[0])

    def meta(self) -> str | None:
        return self.session.get_modelmeta().custom_metadata_map.get(META_KEY)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise KDSearchError(
            "ONNX needs onnxruntime (and onnx, onnxscript to export): "
            "pip install 'kdsearch[export]'"
        ) from None
    return onnxruntime


def _checked(raw: str | None, path: Path) -> dict[str, Any]:
    meta = json.loads(raw) if raw else None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise KDSearchError(
            f"{path} carries no kdsearch metadata (not written by `kdsearch export-model`); "
            "export it from its checkpoint with `kdsearch export-model CHECKPOINT`"
        )
    if meta.get("format_version", 0) > META_VERSION:
        raise KDSearchError(f"{path} was exported by a newer kdsearch; upgrade kdsearch")
    return meta


def load_student(path: str | Path) -> Student:
    """The student in ``path`` (a kdsearch checkpoint, or an ONNX or TorchScript export),
    with its input transform and class names; on the CPU, in eval mode."""
    from kdsearch.training.model_files import load_checkpoint, model_of

    path = Path(path)
    if not path.is_file():
        raise KDSearchError(f"{path}: no such file; pass a checkpoint (.pt) or an export")
    form = kind(path)
    if form == "onnx":
        onnx_model = OnnxModel(path)
        meta = _checked(onnx_model.meta(), path)
        model: Callable[[torch.Tensor], torch.Tensor] = onnx_model
    elif form == "torchscript":
        extra = {f"{META_KEY}.json": ""}
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; exports still load
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = _checked(extra[f"{META_KEY}.json"] or None, path)
        model = module.eval()
    else:
        ckpt = load_checkpoint(path)
        meta = metadata(ckpt)
        model = model_of(ckpt)
    return Student(model, Preprocess.from_dict(meta["preprocess"]), meta["classes"], meta)
