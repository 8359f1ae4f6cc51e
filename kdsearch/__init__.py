"""kdsearch: hyperparameter search for knowledge distillation of image classifiers."""

__version__ = "0.1.0"
