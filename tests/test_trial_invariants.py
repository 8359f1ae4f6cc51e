"""What two trials of one study share and what a trial measures, through the worker's own path
(``Context.load`` and the Objective): the validation images never depend on ``train.seed``,
and the cost columns measure the student, not the teacher loaded beside it."""

from __future__ import annotations

import optuna
import torch
from conftest import SYNTHETIC_SPEC

from kdsearch import api, nets
from kdsearch.config import spec as specs
from kdsearch.training.experiment import Context


def test_validation_images_follow_dataset_seed_not_train_seed(write_spec):
    """Two trials with different training seeds must be compared on the same images."""
    spec = api.validate(write_spec())

    def val(**overrides: int) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = Context.load(spec.with_overrides(overrides), "cpu", with_teacher=False)
        return ctx.data.val.chunk(0, len(ctx.data.val)), ctx.data.val.y

    x1, y1 = val(**{"train.seed": 1})
    x2, y2 = val(**{"train.seed": 2})
    assert torch.equal(x1, x2) and torch.equal(y1.cpu(), y2.cpu())
    x3, _ = val(**{"dataset.seed": 7})  # the data set's seed does pick another split
    assert not torch.equal(x1, x3)


def test_cost_columns_measure_the_student_with_a_teacher_loaded(write_spec, kd_home, monkeypatch):
    monkeypatch.chdir(kd_home)
    monkeypatch.setenv("KDSEARCH_HOME", str(kd_home))
    spec = api.validate(write_spec({"search": {"n_trials": 1, "pruner": {"name": "none"}}}))
    assert spec.distills and spec.teacher.arch == spec.student.arch  # same arch, other widths
    study = api.create_study(spec, f"sqlite:///{kd_home}/kd.db")
    ctx = Context.load(spec, "cpu")
    assert ctx.teacher is not None

    from kdsearch.search.objective import Objective

    trial = study.ask()
    Objective(ctx, study)(trial)
    attrs = study.trials[trial.number].user_attrs

    def params(arch: str, kwargs: dict) -> int:
        model = nets.create(arch, num_classes=ctx.num_classes, **kwargs)
        return sum(p.numel() for p in model.parameters())

    student = params(spec.student.arch, spec.student.kwargs)
    assert attrs["student_params"] == student
    assert student != params(spec.teacher.arch, spec.teacher.kwargs)


def test_export_compare_takes_the_baseline_from_alpha_zero_and_distilled_from_the_rest(
    cli, kd_home
):
    """A partial-data study's two arms: the best alpha = 0 trial and the best alpha > 0 trial,
    each by validation accuracy, whichever is better overall."""
    import io

    import pandas as pd

    from kdsearch.search import study as studies
    from kdsearch.search.storage import open_storage

    search = {
        "n_trials": 4,
        "sampler": {"name": "grid"},
        "space": {"alpha": {"type": "categorical", "choices": [0.0, 0.5]}},
    }
    spec = specs.from_dict({**SYNTHETIC_SPEC, "search": search})
    url = f"sqlite:///{kd_home}/kd.db"
    grid = optuna.distributions.CategoricalDistribution([0.0, 0.5])
    # (alpha, val, test): in "ahead" a distilled trial is the best of all, in "behind" a
    # baseline one, so an arm that took every trial would be caught in one of the two.
    arms = {
        "ahead": ((0.0, 0.60, 0.55), (0.0, 0.70, 0.65), (0.5, 0.80, 0.75), (0.5, 0.65, 0.60)),
        "behind": ((0.0, 0.90, 0.85), (0.0, 0.70, 0.65), (0.5, 0.80, 0.75), (0.5, 0.65, 0.60)),
    }
    for name, trials in arms.items():
        study = studies.create(spec, open_storage(url), name, load_if_exists=False)
        for alpha, val, test in trials:
            study.add_trial(
                optuna.trial.create_trial(
                    params={"alpha": alpha},
                    distributions={"alpha": grid},
                    value=val,
                    user_attrs={"test_accuracy": test},
                )
            )
    out = cli("export-table", "--compare", *arms, "--storage", url, "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(io.StringIO(out.stdout)).set_index("study")
    columns = [
        f"{arm}_{split}_accuracy" for arm in ("baseline", "distilled") for split in ("val", "test")
    ]
    assert tuple(rows.loc["ahead", columns]) == (0.70, 0.65, 0.80, 0.75)
    assert tuple(rows.loc["behind", columns]) == (0.90, 0.85, 0.80, 0.75)
