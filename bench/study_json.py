"""Studies as one JSON file, and back: a finished experiment committed in a few hundred KB.

    .venv/bin/python bench/study_json.py dump STORAGE OUT.json [--study NAME ...]
    .venv/bin/python bench/study_json.py load IN.json STORAGE

``dump`` writes every study of the storage (or the named ones): its user attributes (the
stored spec among them) and every trial with its state, parameters and their distributions,
values, per-epoch validation accuracies (``intermediate_values``), user and system attributes
and times. ``load`` puts them into a new database through Optuna's own ``add_trial``, so every
kdsearch reader works on it as on the original: ``export-table --by configuration``,
``status``, ``report``, ``bench/replay_search.py`` and ``bench/search_table.py``. Confirmation
runs can be queued on a loaded study too (``kdsearch confirm``), since the spec travels with it.

What does not travel: checkpoints (trial folders, ``models/``), and ids the database assigns
(trial ids; numbers are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution

from kdsearch.search.storage import open_storage

FORMAT = 1


def _time(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _trial(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "values": t.values,
        "params": t.params,
        "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
        "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "user_attrs": t.user_attrs,
        "system_attrs": t.system_attrs,
        "datetime_start": _time(t.datetime_start),
        "datetime_complete": _time(t.datetime_complete),
    }


def dump(url: str, names: list[str] | None = None) -> dict[str, Any]:
    """The studies at ``url`` (all, or ``names``), JSON-ready."""
    storage = open_storage(url, existing=True)
    found = [s.study_name for s in optuna.get_all_study_summaries(storage, False)]
    studies = []
    for name in names or found:
        study = optuna.load_study(study_name=name, storage=storage)
        studies.append(
            {
                "name": name,
                "directions": [d.name for d in study.directions],
                "user_attrs": study.user_attrs,
                "trials": [_trial(t) for t in study.get_trials(deepcopy=False)],
            }
        )
    return {"format": FORMAT, "studies": studies}


def _frozen(t: dict[str, Any]) -> optuna.trial.FrozenTrial:
    state = optuna.trial.TrialState[t["state"]]
    values = t["values"]
    return optuna.trial.FrozenTrial(
        number=t["number"],
        state=state,
        value=None,
        values=values,
        datetime_start=dt.datetime.fromisoformat(t["datetime_start"])
        if t["datetime_start"]
        else None,
        datetime_complete=dt.datetime.fromisoformat(t["datetime_complete"])
        if t["datetime_complete"]
        else None,
        params=t["params"],
        distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()},
        user_attrs=t["user_attrs"],
        system_attrs=t["system_attrs"],
        intermediate_values={int(k): v for k, v in t["intermediate_values"].items()},
        trial_id=0,  # the database assigns it
    )


def load(data: dict[str, Any], url: str) -> list[str]:
    """Create each study of ``data`` at ``url`` (which must not hold them yet); their names."""
    if data.get("format") != FORMAT:
        raise SystemExit(f"study_json: format {data.get('format')!r}, expected {FORMAT}")
    storage = open_storage(url)
    for s in data["studies"]:
        directions = [optuna.study.StudyDirection[d].name.lower() for d in s["directions"]]
        study = optuna.create_study(study_name=s["name"], storage=storage, directions=directions)
        for key, value in s["user_attrs"].items():
            study.set_user_attr(key, value)
        # RUNNING and WAITING trials cannot be added; a committed experiment has none left.
        study.add_trials(
            [_frozen(t) for t in s["trials"] if t["state"] in ("COMPLETE", "PRUNED", "FAIL")]
        )
    return [s["name"] for s in data["studies"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump", help="write the studies of STORAGE to OUT.json")
    p.add_argument("storage")
    p.add_argument("out", type=Path)
    p.add_argument("--study", action="append", help="only this study (repeatable)")
    p = sub.add_parser("load", help="create the studies of IN.json in STORAGE")
    p.add_argument("json", type=Path)
    p.add_argument("storage")
    a = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if a.command == "dump":
        data = dump(a.storage, a.study)
        a.out.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
        n = sum(len(s["trials"]) for s in data["studies"])
        print(f"wrote {a.out}: {len(data['studies'])} studies, {n} trials")
    else:
        names = load(json.loads(a.json.read_text()), a.storage)
        print(f"created {', '.join(names)}")


if __name__ == "__main__":
    main()
