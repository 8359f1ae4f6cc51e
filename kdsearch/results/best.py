"""``kdsearch best``: the final number for a finished study.

A trial's value is validation accuracy, which the search maximized and so over-estimates the
chosen configuration. The honest final number is test accuracy, measured once, after the
search: either of the best trial's own checkpoint (the default), or, with ``--retrain``, of
the best parameters retrained on train+val (no images held out any more) for several seeds,
reported as mean ± std so that seed noise is visible next to the gain it is compared with.
The result is stored on the study (user attribute ``final``) so reports and tables can read
it without recomputing.

"Best" is the best configuration by :mod:`kdsearch.search.confidence`: in a study with
confirmation trials, the confirmed configuration with the best mean over seeds (its search
trial's checkpoint is the one tested), reported with its spread, the configurations tied with
it and the study's seed noise; in a single-seed study, the best trial, as before.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from kdsearch.config.metrics import COSTS
from kdsearch.config.spec import ALIASES, Spec
from kdsearch.errors import KDSearchError
from kdsearch.search import confidence, ranking
from kdsearch.search import gain as gains
from kdsearch.search import study as studies
from kdsearch.training.experiment import Context, fit_student
from kdsearch.training.loop import evaluate
from kdsearch.training.model_files import load_model

FINAL_ATTR = "final"
#: The no-distillation student trained with the best trial's other hyperparameters and seed.
BASELINE_ATTR = "baseline"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` as a list of distinct integers, or a one-line error naming the bad item."""
    seeds = []
    for item in text.split(","):
        try:
            seeds.append(int(item))
        except ValueError:
            raise KDSearchError(
                f"--seeds {text!r}: {item.strip()!r} is not an integer (use e.g. 0,1,2)"
            ) from None
    if len(set(seeds)) != len(seeds):
        raise KDSearchError(f"--seeds {text!r}: a seed is repeated (it would train the same run)")
    return seeds


def best_trial(
    study: optuna.Study, budgets: dict[str, float] | None = None
) -> optuna.trial.FrozenTrial:
    """The study's most accurate complete trial within the constraints and ``budgets``
    (``{"student_params": 1e5}``: costs at most these), or an error saying how to get one."""
    if not ranking.complete(study):
        raise KDSearchError(
            f"study {study.study_name!r} has no complete trial yet; run "
            f"`kdsearch worker --study {study.study_name}` first"
        )
    rows = confidence.rank(study, budgets).rows
    trial = rows[0].configuration.trial if rows else None
    if trial is None:
        assert budgets  # without budgets every complete trial is a candidate
        first = next(iter(budgets))
        # A trial with no stored cost (all store theirs before training) would sort last.
        smallest = min(
            ranking.complete(study),
            key=lambda t: c if (c := ranking.cost(t, first)) is not None else math.inf,
        )
        costs = ", ".join(f"{m} {ranking.cost(smallest, m):g}" for m in budgets)
        within = ranking.describe_budgets(budgets)
        raise KDSearchError(
            f"study {study.study_name!r}: no complete trial within {within}"
            f" (the cheapest, trial {smallest.number}, has {costs}); raise the budget"
        )
    return trial


def checkpoint_accuracy(spec: Spec, trial: optuna.trial.FrozenTrial, device: str | None) -> float:
    """Test accuracy of the checkpoint the trial wrote for its best epoch."""
    path = trial.user_attrs.get("checkpoint")
    if not path:
        raise KDSearchError(f"trial {trial.number} stored no checkpoint; use --retrain")
    ctx = Context.load(spec, device, with_teacher=False)
    model = load_model(path, f"trial {trial.number} checkpoint").to(ctx.device)
    return evaluate(model, ctx.data, ctx.data.test)[1]


def _checkpoint_deleted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's checkpoint is gone but the test accuracy it measured is stored."""
    path = trial.user_attrs.get("checkpoint")
    if not path:
        return False
    return not Path(path).is_file() and "test_accuracy" in trial.user_attrs


def retrain_seeds(
    spec: Spec, folder: Path, seeds: list[int], device: str | None
) -> tuple[list[float], list[str]]:
    """Test accuracy (and checkpoint) per seed of ``spec`` retrained on train+val.

    With no validation split the training loop keeps the last epoch, so the fixed number of
    epochs the search tuned is the model.
    """
    final = spec.with_overrides({"dataset.val_fraction": 0.0})
    # One context for every seed: the data do not depend on train.seed, and the teacher is
    # loaded (and its logits cached for the larger training set) only if it is used.
    ctx = Context.load(final, device, with_teacher=final.distills)
    accuracies, checkpoints = [], []
    for seed in seeds:
        out = folder / "final" / f"seed-{seed}.pt"
        outcome = fit_student(ctx, final.with_overrides({"train.seed": seed}), out)
        accuracies.append(outcome.test_accuracy)
        checkpoints.append(str(out))
    return accuracies, checkpoints


def ensure_baseline(study: optuna.Study, spec: Spec, device: str | None) -> dict[str, Any] | None:
    """The alpha = 0 student beside the best trial, trained once and stored on the study.

    It gets the best trial's other hyperparameters and its seed, so the only difference is
    the distillation term. A stored baseline is reused while the best trial's other
    hyperparameters are the ones it was trained with (a baseline without them, as older
    kdsearch's demo stored, is reused as it is). None for a study without a teacher.
    """
    if spec.teacher is None:
        return None
    trial = best_trial(study)
    others = {k: v for k, v in trial.params.items() if ALIASES.get(k, k) != "distill.alpha"}
    stored = study.user_attrs.get(BASELINE_ATTR)
    if isinstance(stored, dict) and stored.get("params", others) == others:
        return stored
    base = spec.with_overrides(trial.params).with_overrides({"distill.alpha": 0.0})
    result: dict[str, Any] = {"from_trial": trial.number, "params": others, "alpha": 0.0}
    result["seed"] = base.train.seed
    if not spec.with_overrides(trial.params).distills:  # the best trial is itself the baseline
        attrs = trial.user_attrs
        result.update(val_accuracy=trial.values[0], test_accuracy=attrs.get("test_accuracy"))
        result.update(parameters=attrs.get("student_params"), checkpoint=attrs.get("checkpoint"))
    else:
        out = studies.folder(study) / "baseline" / "best.pt"
        ctx = Context.load(base, device, with_teacher=False)
        outcome = fit_student(ctx, base, out, progress=False)
        result.update(
            val_accuracy=outcome.val_accuracy,
            test_accuracy=outcome.test_accuracy,
            parameters=outcome.parameters,
            checkpoint=str(out),
            best_epoch=outcome.history.best_epoch + 1,
        )
    study.set_user_attr(BASELINE_ATTR, result)
    return result


def evaluate_best(
    name: str,
    url: str | None = None,
    *,
    retrain: bool = False,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: bool = False,
    budgets: Mapping[str, float] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Test accuracy of study ``name``'s best trial, stored on the study as ``final``.

    The trial's own checkpoint by default; with ``retrain``, the best parameters retrained on
    train+val once per seed. ``baseline`` adds the alpha = 0 student (:func:`ensure_baseline`).
    ``budgets`` (``{"student_params": 1e5}``) picks the most accurate trial costing at most
    these.
    """
    seeds = list(seeds)
    if retrain and len(set(seeds)) != len(seeds):
        raise KDSearchError(f"seeds {seeds}: a seed is repeated (it would train the same run)")
    study, spec = studies.open_study(name, url)
    studies.check_files_safe(study)  # it may retrain into the study's folder
    trial = best_trial(study, dict(budgets or {}))
    trial_spec = spec.with_overrides(trial.params)
    result: dict[str, Any] = {
        "study": name,
        "trial": trial.number,
        "params": trial.params,
        "val_accuracy": trial.values[0],
        "costs": {m: ranking.cost(trial, m) for m in COSTS},
        "confidence": confidence_of(confidence.rank(study, dict(budgets or {}))),
    }
    found = gains.of_study(study)
    if found is not None:
        result["gain"] = found.as_dict()
    if budgets:
        result["budgets"] = dict(budgets)
    if retrain:
        accuracies, checkpoints = retrain_seeds(trial_spec, studies.folder(study), seeds, device)
        result.update(mode="retrain", seeds=seeds, checkpoints=checkpoints)
    elif _checkpoint_deleted(trial):
        # search.keep_checkpoints deleted it while its one seed ranked low; confirmation runs
        # lifted its configuration to the top since. Its test accuracy was measured on that
        # very checkpoint when the trial finished.
        accuracies = [trial.user_attrs["test_accuracy"]]
        result.update(mode="recorded", seeds=[trial_spec.train.seed], checkpoints=[])
    else:
        accuracies = [checkpoint_accuracy(trial_spec, trial, device)]
        result.update(
            mode="checkpoint",
            seeds=[trial_spec.train.seed],
            checkpoints=[trial.user_attrs["checkpoint"]],
        )
    result.update(
        test_accuracies=accuracies,
        mean=statistics.fmean(accuracies),
        std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
    )
    study.set_user_attr(FINAL_ATTR, result)
    if baseline:
        result["baseline"] = ensure_baseline(study, spec, device)
    return result


def confidence_of(ranked: confidence.Ranking) -> dict[str, Any]:
    """The winner's spread over seeds and the study's noise, JSON-ready."""
    top = ranked.rows[0]
    c = top.configuration
    return {
        "n": c.n,
        "seeds": c.seeds,
        "val_accuracies": c.values,
        "val_mean": c.mean,
        "val_std": c.std,
        "val_ci95": top.ci95,
        "test_accuracies": c.tests,
        "test_mean": c.test_mean,
        "test_std": c.test_std,
        "tied": [r.configuration.trial.number for r in ranked.rows if r.tied],
        "noise": ranked.noise,
        "resolution": ranked.resolution,
        "summary": ranked.summary(),
    }


def format_result(r: dict[str, Any]) -> str:
    """The result for a reader: val beside test, so selection bias is visible at a glance."""
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()
    )
    head = f"study {r['study']}: best trial {r['trial']} ({params or 'no searched parameters'})"
    if r.get("budgets"):
        head += f", the most accurate within {ranking.describe_budgets(r['budgets'])}"
    lines = [head, f"val accuracy  {r['val_accuracy']:.4f} (what the search selected on)"]
    c = r.get("confidence")
    if c and c["n"] > 1:
        seeds = ",".join(str(s) for s in c["seeds"] if s is not None)
        test = ""
        if c["test_mean"] is not None:
            test = f", test {c['test_mean']:.4f}"
            test += f" ± {c['test_std']:.4f}" if c["test_std"] is not None else ""
        lines.append(
            f"over {c['n']} seeds val {c['val_mean']:.4f} ± {c['val_std']:.4f} "
            f"(95% CI ± {c['val_ci95']:.4f}){test} (the search trial and confirmation "
            f"seeds {seeds}, each its best-epoch checkpoint)"
        )
    if c:
        lines.append(f"confidence    {c['summary']}")
    if r["mode"] == "checkpoint":
        lines.append(f"test accuracy {r['mean']:.4f} (the trial's best-epoch checkpoint)")
    elif r["mode"] == "recorded":
        lines.append(
            f"test accuracy {r['mean']:.4f} (measured on the trial's best-epoch checkpoint when "
            "it finished; the file was deleted by search.keep_checkpoints before confirmation "
            "runs made it the best: --retrain trains it again)"
        )
    else:
        each = ", ".join(f"{a:.4f}" for a in r["test_accuracies"])
        lines.append(
            f"test accuracy {r['mean']:.4f} ± {r['std']:.4f} over seeds "
            f"{','.join(map(str, r['seeds']))} retrained on train+val ({each})"
        )
    if r.get("gain"):
        lines.append(f"gain          {r['gain']['summary']}")
    base = r.get("baseline")
    if base:
        lines.append(
            f"baseline      val {base['val_accuracy']:.4f}, test {base['test_accuracy']:.4f} "
            f"(alpha = 0, trial {base.get('from_trial', '?')}'s other hyperparameters and seed)"
        )
    elif "baseline" in r:
        lines.append("baseline      none: the study has no teacher, so nothing is distilled")
    return "\n".join(lines)
