"""Memory layout and inference batch on a CPU: what ``kdsearch.training.loop.place`` and
``PREDICT_BATCH`` are worth, as ratios measured in one run.

    .venv/bin/python bench/layout.py [--threads N] [--rounds R]

For cnn5 (the reference's student) and ResNet-20 (the CIFAR teacher), on random 32x32 inputs:
training steps (Adam, batch 128) in NCHW versus channels-last, and inference (eval,
``inference_mode``) in NCHW at batch 1024 (kdsearch's CPU default before) versus channels-last at
``PREDICT_BATCH["cpu"]``. Variants alternate for R rounds and the best round counts, so a
competing process slows both sides alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from kdsearch import nets
from kdsearch.training.loop import PREDICT_BATCH


def _train_rate(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    y = torch.randint(0, 10, (x.shape[0],))
    model.train()

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.shape[0] / (time.perf_counter() - start)


@torch.inference_mode()
def _infer_rate(model: torch.nn.Module, x: torch.Tensor, batch: int) -> float:
    model.eval()
    model(x[:batch])
    start = time.perf_counter()
    for first in range(0, len(x), batch):
        model(x[first : first + batch])
    return len(x) / (time.perf_counter() - start)


def _best(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


def measure(arch: str, rounds: int) -> dict[str, float]:
    """Images/s of each variant for one architecture (best of ``rounds``)."""
    nchw = nets.create(arch, num_classes=10)
    last = nets.create(arch, num_classes=10).to(memory_format=torch.channels_last)
    last.load_state_dict(nchw.state_dict())
    batch = torch.randn(128, 3, 32, 32)
    images = torch.randn(4096, 3, 32, 32)
    images_last = images.contiguous(memory_format=torch.channels_last)
    cpu_batch = PREDICT_BATCH["cpu"]
    return _best(
        rounds,
        {
            "train NCHW": lambda: _train_rate(nchw, batch, 8),
            "train channels-last": lambda: _train_rate(
                last, batch.contiguous(memory_format=torch.channels_last), 8
            ),
            "infer NCHW b1024": lambda: _infer_rate(nchw, images, 1024),
            f"infer channels-last b{cpu_batch}": lambda: _infer_rate(last, images_last, cpu_batch),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds} rounds")
    for arch in ("cnn5", "resnet20"):
        rates = measure(arch, args.rounds)
        names = list(rates)
        for name in names:
            print(f"{arch:9} {name:28} {rates[name]:8,.0f} img/s")
        print(
            f"{arch:9} training speed-up {rates[names[1]] / rates[names[0]]:.2f}x, "
            f"inference speed-up {rates[names[3]] / rates[names[2]]:.2f}x"
        )


if __name__ == "__main__":
    main()
