"""``kdsearch bench-search``'s table again, from its finished studies: no training.

    .venv/bin/python bench/search_table.py STORAGE [--tag TAG] [--json]

``bench-search`` names its studies ``<spec>-grid-<tag>`` and ``<spec>-tpe<seed>-<tag>`` and
stores each search's epoch budget on it; this reads them back (the one tag in the storage, or
``--tag``) and prints the same table through
:func:`kdsearch.benchmarks.search_efficiency.measure`, with what confirmation runs queued on
the studies (``kdsearch confirm``) found. With a committed experiment:

    .venv/bin/python bench/study_json.py load bench/cifar10-subset-05/studies.json sqlite:///c.db
    .venv/bin/python bench/search_table.py sqlite:///c.db
"""

from __future__ import annotations

import argparse
import json
import re

import optuna

from kdsearch.benchmarks import search_efficiency
from kdsearch.redact import mask_url
from kdsearch.search.storage import open_storage
from kdsearch.search.study import EPOCH_BUDGET_ATTR

NAME = re.compile(r"^(?P<spec>.+)-(?:grid|tpe(?P<seed>\d+))-(?P<tag>[0-9a-f]+)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage")
    parser.add_argument("--tag", help="the run's tag, if the storage holds several")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(a.storage, existing=True)
    found = [NAME.match(s.study_name) for s in optuna.get_all_study_summaries(storage, False)]
    runs = [m for m in found if m and (a.tag is None or m["tag"] == a.tag)]
    tags = {m["tag"] for m in runs}
    if len(tags) != 1:
        where = mask_url(a.storage)
        raise SystemExit(f"search_table: runs {sorted(tags)} in {where}; pick one with --tag")
    grid = next(m.string for m in runs if m["seed"] is None)
    searches = {int(m["seed"]): m.string for m in runs if m["seed"] is not None}
    first = optuna.load_study(study_name=next(iter(searches.values())), storage=storage)
    budget = first.user_attrs[EPOCH_BUDGET_ATTR]
    grid_epochs = len(
        search_efficiency.epoch_curve(search_efficiency.search_trials(a.storage, grid))
    )
    fraction = budget / grid_epochs
    result = search_efficiency.measure(
        a.storage, grid, dict(sorted(searches.items())), budget, fraction
    )
    print(json.dumps(result.to_dict()) if a.json else search_efficiency.format_table(result))


if __name__ == "__main__":
    main()
