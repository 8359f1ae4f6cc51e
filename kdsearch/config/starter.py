"""A first spec for a user's own image folder (``kdsearch init``), written from what the folder
holds, each value commented with what it does and why it was chosen.

The spec is a starting point that validates and runs, not a tuned recipe: its values are the
ones ``studies/imagenette.yaml`` was measured with (docs/imagenette.md), except ``image_size``,
proposed from the images themselves, and ``teacher_cache``, which follows from it.
"""

from __future__ import annotations

import json
import re

from kdsearch.data.scan import Contents, Layout

#: The largest proposed input side: ImageNet's, and where a search on CPUs stops being short.
MAX_SIDE = 224
#: Proposed sides are multiples of this: the stride of the common nets' last stage.
STRIDE = 32
#: torchvision's evaluation resize + centre crop keeps 224 of 256: images are stored at
#: ``image_size / 0.875``.
CENTRE = 0.875
#: Epochs of the student runs; the sampled teacher cache needs at least one view per epoch.
EPOCHS = 10
#: The trial budget: enough for the TPE sampler to start modelling after its first trials.
TRIALS = 12


def propose_size(short_side: int) -> int:
    """The largest multiple of :data:`STRIDE` at most 0.875 of the images' median shorter side
    (so that, stored at ``image_size / 0.875`` for random-resized crops, the median image is not
    enlarged); at least :data:`STRIDE`, at most :data:`MAX_SIDE`."""
    return max(STRIDE, min(MAX_SIDE, int(short_side * CENTRE) // STRIDE * STRIDE))


def study_name(folder: str) -> str:
    """The folder's name as a study name (letters, digits, '-', '_', '.'; no leading '.')."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder).lstrip(".-") or "my-images"
    return name[:120]


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain where that reads back as the same string, else quoted."""
    return text if re.fullmatch(r"[A-Za-z0-9_./~-]+", text) else json.dumps(text)


def stored_side(size: int) -> int:
    """The side images are kept at for input ``size`` (``crop: auto``, no ``storage_size``):
    the pad crop's own size up to 64 px, ``size / 0.875`` for random-resized crops above."""
    return size if size <= 64 else round(size / CENTRE)


def _size_comment(size: int, contents: Contents) -> str:
    median, stored = contents.median_short_side, stored_side(size)
    if size == MAX_SIDE and stored < median:
        why = f"capped at {MAX_SIDE} (ImageNet's input; larger costs more than it gives)"
    elif stored > median:
        why = f"the smallest proposed: images are enlarged to {stored} px"
    else:
        why = f"images are kept at {stored} px, so the median image is not enlarged"
    return (
        f"  # Median shorter side of the images: {median} px. {size} is the largest multiple "
        f"of {STRIDE}\n  # that fits it; {why}.\n"
    )


def write(
    data: str,
    found: Layout,
    contents: Contents,
    teacher: str,
    student: str,
    command: str,
    epochs: int = EPOCHS,
    trials: int = TRIALS,
) -> str:
    """The commented YAML spec for the folder ``data`` (as the user named it): ``trials``
    trials of ``epochs`` epochs, the teacher trained half as long again."""
    size = propose_size(contents.median_short_side)
    name = study_name(found.root.resolve().name)
    pad = size <= 64  # crop: auto picks the pad crop up to 64 px, whose views can all be cached
    n_train = found.train.count
    held = found.held.name
    cache = "all_views" if pad else f"sampled:{epochs}"
    cache_why = (
        "every crop+flip view of the pad crop, computed once"
        if pad
        else f"random-resized crops are continuous: {epochs} seeded crops per image, one per epoch"
    )
    skip = bool(contents.unreadable)
    skip_why = (
        f"{len(contents.unreadable)} files cannot be decoded (init listed them): skipped. "
        "Delete them and set false to be told of new ones."
        if skip
        else "Every image decoded when init ran; true would skip (and count) broken files."
    )
    grey = (
        f"# {contents.greyscale} greyscale images are expanded to RGB (the nets take 3 channels).\n"
        if contents.greyscale
        else ""
    )
    return f"""\
# Written by `{command}`.
# {data}: {len(found.classes)} classes, {n_train} images in train/, {found.held.count} in {held}/,
# {found.train.ignored + found.held.ignored} non-image files ignored.
{grey}# Next: kdsearch validate SPEC --data; kdsearch train-teacher SPEC;
# kdsearch create-study SPEC; kdsearch worker --study {name}; kdsearch best --study {name}
# (docs/own-images.md).
name: {name}
dataset:
  name: imagefolder
  root: {_scalar(data)}  # train/<class>/ and {held}/<class>/ ({held}/ is the held-out test split)
  val_fraction: 0.1  # {round(n_train * 0.1)} training images held out to rank trials
{_size_comment(size, contents)}  image_size: {size}  # the side the nets see
  min_scale: 0.35  # random-resized crops keep 35-100% of the image (fastai's, for small data)
  # {skip_why}
  skip_unreadable: {str(skip).lower()}
  seed: 0  # the validation split and data order
teacher:
  arch: {teacher}
  # Trained here from scratch by `kdsearch train-teacher` (about as long as one student x 1.5).
  # To start from ImageNet weights instead: kwargs: {{weights: DEFAULT}} (torchvision) or
  # {{pretrained: true}} (timm), which downloads them once.
  checkpoint: models/{name}-teacher.pt
teacher_train:  # merged over train: for the teacher only
  epochs: {epochs + epochs // 2}
  optimizer: {{name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, nesterov: true}}
student:
  arch: {student}  # the network to ship
train:
  epochs: {epochs}  # per trial: short runs rank configurations, best retrains the winner
  batch_size: 64
  optimizer: {{name: adam, lr: 2.0e-3, weight_decay: 1.0e-5}}
  schedule: {{name: onecycle}}  # warm up, then anneal: suits short runs
distill:
  loss: hinton  # the teacher's softened outputs as targets (Hinton et al. 2015)
  alpha: 0.7  # weight of the teacher's term (searched below)
  temperature: 4.0  # softening of the teacher's outputs (searched below)
  teacher_cache: {cache}  # {cache_why}
search:
  n_trials: {trials}  # the trial budget; raise it later with `kdsearch extend`
  sampler: {{name: tpe, seed: 0}}
  pruner: {{name: hyperband}}  # stops trials that fall behind after a few epochs
  space:  # what the search tunes; any numeric key by its dotted path may be added
    alpha: {{type: float, low: 0.0, high: 1.0}}
    temperature: {{type: float, low: 1.0, high: 16.0, log: true}}
    lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
"""
