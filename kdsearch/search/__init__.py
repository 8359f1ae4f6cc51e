"""The Optuna side: studies and samplers (``study``), storages (``storage``), the objective
(``objective``), per-trial resume state and artifacts (``trial_files``), worker processes
(``worker``)."""
