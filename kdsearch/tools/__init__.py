"""What a user runs after (or beside) a search, as typed functions the CLI and the Python API
call: ``best``, ``export``, ``report``, ``evaluate``, ``bench``, ``demo``."""
