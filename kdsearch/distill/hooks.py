"""Intermediate features through forward hooks, so no network is edited for distillation.

As in torchdistill's ``forward_hook``: a hook on each named layer stores that layer's output
of the latest forward pass; the training loop hands the stored outputs to the method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from kdsearch.errors import unknown_name


class FeatureHooks:
    """Outputs of ``layers`` (``named_modules`` names) of ``model`` from its latest forward."""

    def __init__(self, model: nn.Module, layers: Iterable[str], what: str) -> None:
        modules = dict(model.named_modules())
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in layers:
            if name not in modules or not name:
                raise unknown_name(f"distill.kwargs: {what} layer", name, [m for m in modules if m])
            self._handles.append(modules[name].register_forward_hook(self._keep(name)))

    def _keep(self, name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            self.features[name] = output

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        """The stored outputs, forgotten here so a batch never sees the previous one's."""
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
