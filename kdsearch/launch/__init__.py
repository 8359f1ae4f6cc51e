"""Launching workers on schedulers: a study's ``kdsearch worker`` processes as a Slurm job
array (:mod:`kdsearch.launch.slurm`), with nothing secret in what the scheduler keeps."""
