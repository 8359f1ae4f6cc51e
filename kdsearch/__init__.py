"""kdsearch: hyperparameter search for knowledge distillation of image classifiers.

The Python API (:mod:`kdsearch.api`) is importable from here, e.g. ``kdsearch.create_study``.
Its functions load on first use (PEP 562), so ``import kdsearch`` and ``kdsearch --help``
import no torch, Optuna or pandas.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "benchmark_loop",
    "benchmark_search",
    "cache_teacher",
    "compare_studies",
    "confirm_study",
    "create_study",
    "delete_study",
    "evaluate_best",
    "evaluate_checkpoint",
    "export_model",
    "extend_study",
    "import_checkpoint",
    "list_nets",
    "load_student",
    "predict",
    "run_workers",
    "serve_dashboard",
    "serve_storage_proxy",
    "study_status",
    "train_student",
    "train_teacher",
    "trials_table",
    "validate",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kdsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
