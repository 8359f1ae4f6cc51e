"""The two benchmarks that ship as commands: ``kdsearch bench`` (``loop_speed``: a
reference-style distillation loop against kdsearch's, images per second) and
``kdsearch bench-search`` (``search_efficiency``: the epochs a TPE + Hyperband search needs to
reach the best of a grid). Their results live in the repository's ``bench/`` folder."""
