"""What a user reads during and after a search, as typed functions the CLI and the Python API
call: a study's ``status``, its table (``export``), the best trial tested (``best``), the
``report`` and its ``figures``, the ``dashboard``, and a checkpoint measured (``evaluate``)."""
