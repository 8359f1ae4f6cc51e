"""The study spec: a YAML file read once, validated into typed objects (``spec``, with the
generic builder :mod:`kdsearch.schema`), and the names it may optimize (``metrics``).
Importing it loads no torch; only checking names against the registries does."""

from kdsearch.config.spec import ParamSpec, Spec, from_dict, load

__all__ = ["ParamSpec", "Spec", "from_dict", "load"]
