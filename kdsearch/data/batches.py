"""Training batches by index: sliced on the device, or gathered from a shared store ahead of use.

Images on the training device are indexed in place. Images in a memory-mapped store
(:mod:`kdsearch.data.store`) are gathered by a background thread a few batches ahead of the
loop: on a GPU into pinned memory and copied on a side stream without blocking, so the GPU does
not wait on the gather; on a CPU the gather of the next batch overlaps this batch's compute
(``index_select`` releases the GIL). The order of batches, and so every result, is the same on
both paths; only where the pixels come from differs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from kdsearch.data.datasets import Images

#: Batches gathered ahead of the one being trained on.
DEPTH = 3
#: What the gathering thread hands over: pixels and the CUDA event of their copy, or its error.
Gathered = tuple[torch.Tensor, torch.cuda.Event | None] | BaseException


def batches(
    images: Images, order: torch.Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(idx, pixels)`` per batch of ``order`` (on ``device``), pixels uint8 on ``device``."""
    if not images.shared:
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            yield idx, images.x[idx]
        return
    chunks = order.split(batch_size)
    for idx, x in zip(
        chunks, _prefetched(images, order.cpu().split(batch_size), device), strict=True
    ):
        yield idx, x


def _prefetched(
    images: Images, chunks: tuple[torch.Tensor, ...], device: torch.device
) -> Iterator[torch.Tensor]:
    """The pixels of each chunk of indices, gathered (and copied to ``device``) by a thread."""
    ready: queue.Queue[Gathered] = queue.Queue(DEPTH)
    stop = threading.Event()
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None

    def put(item: Gathered) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def gather() -> None:
        try:
            for idx in chunks:
                x, event = images.take(idx), None
                if cuda:
                    x = x.pin_memory()
                    with torch.cuda.stream(stream):
                        x = x.to(device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(stream)
                if not put((x, event)):
                    return
        except BaseException as err:  # handed to the loop, which raises it
            put(err)

    worker = threading.Thread(target=gather, name="kdsearch-prefetch", daemon=True)
    worker.start()
    try:
        for _ in chunks:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            x, event = item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                x.record_stream(current)
            yield x
    finally:
        stop.set()
        worker.join()
