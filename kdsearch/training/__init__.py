"""Training one network: the loop every trial runs (``loop``), the teacher online or from its
logit cache (``teacher``), model files on disk (``model_files``) and the glue that trains a
student from a spec (``experiment``)."""
