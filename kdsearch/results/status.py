"""How the studies in a storage stand: trials by state, budget, best, live workers, time left.

Everything is read from the storage, so ``kdsearch status`` works from any machine that
reaches the database. A worker is live while its RUNNING trial's heartbeat is fresher than
the spec's grace period (without heartbeats, e.g. through the gRPC proxy, every RUNNING trial
counts). The rate is each worker's own, timed from its first trained epoch
(:mod:`kdsearch.search.pace`: its start-up is not training), all workers together; the time
left assumes the remaining trials train as many epochs as the finished ones did on average,
pruned ones included, and is not estimated before one has finished unless nothing prunes. A
``bench-search`` search is budgeted in epochs, not trials (its ``n_trials`` only caps it), so
for it the budget and the time left are epochs.
"""

from __future__ import annotations

from typing import Any

from kdsearch.search import confidence, confirm, pace, ranking
from kdsearch.search.progress import fmt_params, fmt_seconds
from kdsearch.search.study import EPOCH_BUDGET_ATTR, SPEC_ATTR


def _spec_search(study: Any) -> dict[str, Any]:
    return study.user_attrs.get(SPEC_ATTR, {}).get("search", {})


def _live_trial_ids(storage: Any, study: Any, grace_period: int | None) -> set[int] | None:
    """Trial ids of RUNNING trials whose heartbeat is fresh; None when heartbeats are off."""
    import optuna

    if not isinstance(storage, optuna.storages.RDBStorage):
        return None
    probe = optuna.storages.RDBStorage.__new__(optuna.storages.RDBStorage)
    probe.__dict__.update(storage.__dict__)
    search = _spec_search(study)
    probe.heartbeat_interval = search.get("heartbeat_interval") or 60
    probe.grace_period = grace_period or search.get("grace_period")
    stale = set(probe._get_stale_trial_ids(study._study_id))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return {t._trial_id for t in running} - stale


def _trial_budget_epochs(
    budget: int, finished: list[Any], live: list[Any], per_trial: float
) -> float:
    """Epochs a trial budget still holds: the trials yet to start at ``per_trial`` epochs each,
    plus what the running ones lack of it."""
    to_start = max(0, budget - len(finished) - len(live))
    running_left = sum(max(0.0, per_trial - pace.epochs(t)) for t in live)
    return to_start * per_trial + running_left


def status_of(storage: Any, name: str) -> dict[str, Any]:
    """The status of one study as a JSON-ready dict (keys documented in README, `status`)."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    search = _spec_search(study)
    epochs_per_trial = study.user_attrs.get(SPEC_ATTR, {}).get("train", {}).get("epochs")
    counts = {s.name.lower(): 0 for s in optuna.trial.TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # The budget counts search trials; confirmation trials are reported apart, and a trial
    # turned away over budget counts nowhere.
    finished = [t for t in trials if t.state in finished_states and ranking.claims_budget(t)]
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    live_ids = _live_trial_ids(storage, study, None)
    live = [t for t in running if live_ids is None or t._trial_id in live_ids]

    best = None
    ranked = confidence.rank(study)
    if ranked.rows:
        top = ranked.rows[0]
        c = top.configuration
        best = {
            "number": c.trial.number,
            "value": c.mean,
            "params": c.trial.params,
            "test_accuracy": c.test_mean,
            "n": c.n,
            "std": c.std,
            "ci95": top.ci95,
            "test_std": c.test_std,
            "tied": ranked.ties,
            "noise": ranked.noise,
            "resolution": ranked.resolution,
            "tested": ranked.tested,
        }

    epochs_done = sum(len(t.intermediate_values) for t in trials)
    rate = pace.epochs_per_second(trials, {t.user_attrs.get("worker") for t in live})

    budget = search.get("n_trials")
    epoch_budget = study.user_attrs.get(EPOCH_BUDGET_ATTR)
    to_train: float | None = None
    if epoch_budget is not None:
        spent = epochs_done >= epoch_budget
        to_train = max(0, epoch_budget - epochs_done)
    else:
        spent = len(finished) >= (budget or 0)
        prunes = (search.get("pruner") or {}).get("name") != "none"
        per_trial = pace.trial_epochs(finished, epochs_per_trial, prunes)
        if budget is not None and per_trial is not None:
            to_train = _trial_budget_epochs(budget, finished, live, per_trial)
    left = to_train / rate if rate and to_train is not None else None
    return {
        "study": name,
        "direction": "/".join(d.name.lower() for d in study.directions),
        "n_trials": budget,
        "epoch_budget": epoch_budget,
        "epochs_trained": epochs_done,
        "finished": len(finished),
        "states": counts,
        "best": best,
        "confirm": confirm.progress(study),
        "workers": [
            {
                "trial": t.number,
                "worker": t.user_attrs.get("worker"),
                "epoch": pace.epochs(t),
                "epochs": epochs_per_trial,
            }
            for t in live
        ],
        "epochs_per_second": rate,
        "seconds_left": 0.0 if spent and not running else left,
        "gain": _gain(study),
    }


def _gain(study: Any) -> dict[str, Any] | None:
    """The gain over the study's tuned baseline arm (``search.baseline``), once both arms
    have a complete trial."""
    from kdsearch.search import gain

    found = gain.of_study(study)
    return None if found is None else found.as_dict()


def all_statuses(storage: Any, name: str | None = None) -> list[dict[str, Any]]:
    """Every study in ``storage`` (or just ``name``), in creation order."""
    import optuna

    from kdsearch.errors import unknown_name

    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name is not None:
        if name not in names:
            raise unknown_name("study", name, names or ["(no studies: run create-study)"])
        names = [name]
    return [status_of(storage, n) for n in names]


def format_status(s: dict[str, Any]) -> str:
    """A few lines for a person: the same facts as the JSON."""
    states = ", ".join(f"{n} {k}" for k, n in s["states"].items() if n)
    if s["epoch_budget"] is not None:
        done = f"{s['epochs_trained']}/{s['epoch_budget']} epochs trained, {s['finished']} trials"
    else:
        budget = s["n_trials"] if s["n_trials"] is not None else "?"
        done = f"{s['finished']}/{budget} trials"
    lines = [f"{s['study']}: {done} finished ({states or 'no trials'})"]
    c = s["confirm"]
    if c["runs"]:
        lines.append(
            f"  confirmation: {c['complete']}/{c['runs']} runs complete"
            + "".join(f", {c[k]} {k}" for k in ("running", "waiting", "failed") if c[k])
        )
    b = s["best"]
    if b:
        params = fmt_params(b["params"])
        lines.append(f"  best: trial {b['number']} {_spread(b)} ({params})")
        if b["tested"]:
            lines.append(
                f"  noise: differences under {100 * b['resolution']:.2f} points are not "
                f"resolved; {b['tied']} configurations tied with the best"
            )
    g = s.get("gain")
    if g:
        ci = f" ± {100 * g['val_ci95']:.2f}" if g["val_ci95"] is not None else " (untested)"
        verdict = ", resolved" if g["resolved"] else ""
        points = f"{100 * g['val_gain']:+.2f} val points{ci}{verdict}"
        lines.append(f"  gain over {g['baseline']['study']}: {points}")
    for w in s["workers"]:
        of = f"/{w['epochs']}" if w["epochs"] else ""
        lines.append(f"  running: trial {w['trial']} epoch {w['epoch']}{of} on {w['worker']}")
    for j in s.get("slurm_jobs", ()):
        lines.append(f"  slurm: job {j['job']} {j['state']} {j['elapsed']}/{j['time_limit']}")
    rate, left = s["epochs_per_second"], s["seconds_left"]
    if rate is None and s["workers"]:
        lines.append("  time left: estimating, from each worker's second trained epoch")
    elif rate is not None:
        if left is not None:
            eta = "done" if left == 0 else f"about {fmt_seconds(left)} left"
        elif s["finished"] == 0:
            eta = "time left: estimating until a trial ends (the pruner may stop trials early)"
        else:
            eta = "time left: unknown"
        lines.append(f"  {rate:.3g} epochs/s, {eta}")
    return "\n".join(lines)


def _spread(b: dict[str, Any]) -> str:
    """``val 0.8512 ± 0.0021 (n=4), test 0.8433 ± 0.0030``, or single values for one seed."""

    def one(value: float | None, std: float | None) -> str:
        if value is None:
            return "?"
        return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    text = f"val {one(b['value'], b['std'])}"
    if b["n"] > 1:
        text += f" (n={b['n']})"
    if b["test_accuracy"] is not None:
        text += f", test {one(b['test_accuracy'], b['test_std'])}"
    return text
