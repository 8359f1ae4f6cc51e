"""Images as uint8 tensors: the data-set registry and splits (``datasets``) and the exact
augmentation views shared by the student and the teacher cache (``views``)."""

from kdsearch.data.datasets import UNLABELED, Images, Splits, load, register

__all__ = ["UNLABELED", "Images", "Splits", "load", "register"]
