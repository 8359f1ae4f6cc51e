"""What optuna-dashboard shows of a kdsearch study, and serving it.

Everything is stored on the study with Optuna's and optuna-dashboard's own mechanisms, so
any dashboard on the storage shows it, ``kdsearch dashboard`` or a plain ``optuna-dashboard
URL``:

- the objective's name (``val_accuracy``) instead of "Objective 0";
- the spec as YAML in the study's note (the user attribute ``kdsearch_spec`` is one long JSON
  line there), and the teacher's arch, checkpoint and accuracy as separate user attributes;
- with ``search.artifact_store`` set, the spec file and ``report``'s figures as study
  artifacts, which the dashboard previews when it is served with that artifact store.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml

from kdsearch.config.spec import Spec

log = logging.getLogger(__name__)

ARTIFACT_PREFIX = "artifacts:"  # Optuna's and optuna-dashboard's study system attribute keys


def spec_yaml(spec: Spec) -> str:
    return yaml.safe_dump(json.loads(json.dumps(spec.public_dict())), sort_keys=False)


def teacher_attrs(spec: Spec) -> dict[str, Any]:
    """The teacher's arch and checkpoint, and its accuracies once the checkpoint exists."""
    if spec.teacher is None:
        return {"teacher_arch": "none (no distillation)"}
    attrs: dict[str, Any] = {"teacher_arch": spec.teacher.arch}
    if spec.teacher.kwargs:
        attrs["teacher_kwargs"] = dict(spec.teacher.kwargs)
    if spec.teacher.checkpoint:
        from kdsearch.paths import resolve

        path = resolve(spec.teacher.checkpoint)
        attrs["teacher_checkpoint"] = str(path)
        if path.is_file():
            from kdsearch.training.model_files import load_checkpoint

            metrics = load_checkpoint(path, "teacher.checkpoint")["metrics"]
            for split in ("val", "test"):
                if metrics.get(f"{split}_accuracy") is not None:
                    attrs[f"teacher_{split}_accuracy"] = round(
                        float(metrics[f"{split}_accuracy"]), 4
                    )
    return attrs


def describe(study: optuna.Study, spec: Spec) -> None:
    """Name the metric, write the note (the gain over the tuned baseline arm once there is
    one, then the spec) and the teacher attributes (idempotent: run again as trials end)."""
    from optuna_dashboard import save_note

    from kdsearch.search import gain as gains
    from kdsearch.search import study as studies

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.search.objectives)
    for key, value in teacher_attrs(spec).items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    note = f"## Spec of `{study.study_name}`\n\n```yaml\n{spec_yaml(spec)}```\n"
    of = study.user_attrs.get(studies.BASELINE_OF_ATTR)
    if of is not None:
        note = (
            f"The tuned baseline arm of `{of}`: its student searched without a teacher.\n\n" + note
        )
    found = gains.of_study(study)
    if found is not None:
        note = f"## Distilled against the tuned baseline\n\n{found.sentence()}.\n\n" + note
    elif study.user_attrs.get(studies.BASELINE_STUDY_ATTR):
        arm = study.user_attrs[studies.BASELINE_STUDY_ATTR]
        note = (
            f"The tuned baseline arm is `{arm}`; the gain shows once both arms have a trial.\n\n"
            + note
        )
    save_note(study, note)


def artifact_store(location: str | None) -> Any:
    """Optuna's artifact store for ``search.artifact_store`` (None when unset)."""
    from kdsearch.search.trial_files import CheckpointStore

    return CheckpointStore(location).store


def study_artifacts(study: optuna.Study) -> dict[str, str]:
    """File name -> artifact id of the study's own artifacts (ones deleted in the dashboard,
    stored as ``null``, left out)."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith(ARTIFACT_PREFIX)]
    return {m["filename"]: m["artifact_id"] for m in metas if m}


def attach(study: optuna.Study, location: str | None, files: dict[str, bytes]) -> list[str]:
    """Store ``files`` (name -> content) as study artifacts; returns the names stored.

    A file attached before under the same name is overwritten in place (same artifact id),
    so re-running ``report`` does not pile up copies in the dashboard.
    """
    store = artifact_store(location)
    if store is None:
        return []
    from optuna.artifacts import upload_artifact

    existing = study_artifacts(study)
    for name, content in files.items():
        if name in existing:
            store.write(existing[name], io.BytesIO(content))
            continue
        # upload_artifact takes a path and records its base name as the file name.
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            (Path(folder) / name).write_bytes(content)
            upload_artifact(
                artifact_store=store,
                file_path=str(Path(folder) / name),
                study_or_trial=study,
                storage=study._storage,
            )
    return list(files)


def artifact_location(storage: Any) -> str | None:
    """The artifact store the storage's kdsearch studies name (the first, if they differ)."""
    from kdsearch.search.study import SPEC_ATTR

    named = {
        s.user_attrs[SPEC_ATTR]["search"].get("artifact_store")
        for s in optuna.get_all_study_summaries(storage)
        if SPEC_ATTR in s.user_attrs
    } - {None}
    if len(named) > 1:
        log.warning(
            "studies name several artifact stores (%s); serving %s (choose with --artifact-store)",
            ", ".join(sorted(named)),
            min(named),
        )
    return min(named) if named else None


def exposure_warning(host: str) -> str | None:
    """What serving on ``host`` exposes, if it is reachable from other machines; else None.

    optuna-dashboard has no login: whoever reaches the port reads every study of the database
    (parameters, metrics, specs, artifacts) and can delete studies.
    """
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"--host {host} serves the dashboard to every machine that can reach this port, "
        "with no login: they can read every study in the database and delete studies; "
        "keep the default 127.0.0.1 and reach it with `ssh -L 8080:127.0.0.1:8080 HOST`"
    )
