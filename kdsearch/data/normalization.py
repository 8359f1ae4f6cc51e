"""Per-channel input normalization constants: the named ones and the ``M,M,M/S,S,S`` form.

A network only works with the constants it was trained with, so a checkpoint carries its own
and a spec or ``import-checkpoint --normalization`` may name them.
"""

from __future__ import annotations

from kdsearch.errors import KDSearchError

Triple = tuple[float, float, float]

#: Per-channel mean and std (in [0, 1] units): the reference's CIFAR constants, and ImageNet's
#: (which the public CIFAR ResNets of ``akamaster/pytorch_resnet_cifar10`` were trained with).
NAMED: dict[str, tuple[Triple, Triple]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def parse(text: str, what: str) -> tuple[Triple, Triple]:
    """``cifar10|cifar100|imagenet`` or ``MEAN,MEAN,MEAN/STD,STD,STD`` as (mean, std)."""
    if text in NAMED:
        return NAMED[text]
    mean, sep, std = str(text).partition("/")
    try:
        m = tuple(float(v) for v in mean.split(","))
        s = tuple(float(v) for v in std.split(","))
    except ValueError:
        m = s = ()
    if not sep or len(m) != 3 or len(s) != 3 or min(s) <= 0:
        raise KDSearchError(
            f"{what}: {text!r} is not a normalization; use {', '.join(NAMED)} or "
            "MEAN,MEAN,MEAN/STD,STD,STD in [0, 1] units (e.g. 0.5,0.5,0.5/0.25,0.25,0.25)"
        )
    return m, s
