"""``python -m kdsearch``: the same as the ``kdsearch`` command."""

import sys

from kdsearch.cli import main

sys.exit(main())
