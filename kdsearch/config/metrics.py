"""The names a spec may optimize or constrain (``search.objectives``, ``search.constraints``).

They are part of the spec's vocabulary, so they live with it; :mod:`kdsearch.search.ranking`
reads trials by them.
"""

from __future__ import annotations

#: Spec name -> trial user attribute. Latency is the median at batch 1 on the worker's device.
METRICS: dict[str, str] = {
    "val_accuracy": "val_accuracy",
    "student_params": "student_params",
    "flops": "student_flops",
    "latency_ms": "latency_ms_b1",
}
#: Readable axis names, for plots and tables.
LABELS: dict[str, str] = {
    "val_accuracy": "validation accuracy",
    "student_params": "student parameters",
    "flops": "forward FLOPs per image",
    "latency_ms": "latency at batch 1 (ms)",
}
COSTS = tuple(m for m in METRICS if m != "val_accuracy")
