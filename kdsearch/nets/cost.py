"""What a network costs to run: parameters, forward FLOPs and measured latency.

Latency is the median wall time of an eval-mode forward pass after warm-up runs, on the
device it is measured on (the worker's), at batch 1 (interactive use) and batch 256
(throughput). CUDA work is synchronized before each clock read, since kernels run
asynchronously.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from kdsearch.nets.flops import count_parameters, forward_flops

#: The batch sizes latency is measured at.
LATENCY_BATCHES = (1, 256)
#: Seconds of timed runs per batch size on a CPU, after which the median is taken.
CPU_BUDGET_S = 2.0


@dataclass(frozen=True)
class Cost:
    """One network's cost; field names are the trial user attributes they are stored as."""

    student_params: int
    student_flops: int
    latency_ms_b1: float
    latency_ms_b256: float
    latency_device: str

    def as_attrs(self) -> dict[str, int | float | str]:
        return asdict(self)


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    runs: int,
    warmup: int,
    budget_s: float = math.inf,
) -> float:
    """Median milliseconds of one forward pass of a zero batch of ``shape`` on ``device``.

    Timed runs stop early once they have used ``budget_s`` seconds (after at least one).
    """
    x = torch.zeros(shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
        if sum(times) >= budget_s * 1e3:
            break
    return statistics.median(times)


def measure(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    device: torch.device,
    runs: int | None = None,
) -> Cost:
    """Parameters, FLOPs of one image and latency of ``model`` for ``(C, H, W)`` images.

    ``runs`` defaults to 20 timed passes (3 warm-up) on a GPU and 3 (1 warm-up) on a CPU,
    where a batch of 256 is slow and trials should stay fast: there the timed runs also stop
    after 2 seconds (a ResNet-18 at batch 256 takes seconds per pass on a CPU). The model is
    left in eval mode on ``device``.
    """
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"FLOPs are counted for square images, got {height}x{width}")
    model = model.to(device).eval()
    gpu = device.type == "cuda"
    runs = runs or (20 if gpu else 3)
    warmup, budget_s = (3, math.inf) if gpu else (1, CPU_BUDGET_S)
    b1, b256 = (
        latency_ms(model, (batch, *image_shape), device, runs, warmup, budget_s)
        for batch in LATENCY_BATCHES
    )
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    return Cost(
        student_params=count_parameters(model),
        student_flops=forward_flops(model, height, channels),
        latency_ms_b1=round(b1, 4),
        latency_ms_b256=round(b256, 4),
        latency_device=f"{device.type}:{name}" if gpu else name,
    )
