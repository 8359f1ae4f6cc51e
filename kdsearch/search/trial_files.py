"""The checkpoint store: where a trial's resume state and best model live beyond one machine.

Every trial trains in a local folder (``models/studies/<study>-<id>/trial-NNNNN``). When workers
span machines, a retry may run on another machine than the attempt it resumes, so with
``search.artifact_store`` set (a shared folder, or ``s3://bucket``) each epoch's resume state
and the best model are also uploaded with Optuna's artifact API and attached to the trial;
a retry downloads the newest resume state of its retry chain before it starts. Only the newest
upload per file is kept, and pruned or no-longer-best trials' uploads are removed. In a shared
folder each study's uploads sit in a subfolder named like its local folder (``<study>-<id>``);
in S3 they are keyed by Optuna's unique artifact ids, which only that study's trials record.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import (
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)

from kdsearch.errors import KDSearchError
from kdsearch.paths import resolve

log = logging.getLogger(__name__)


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """One trial, read from storage without loading the whole study."""
    storage = study._storage
    return storage.get_trial(
        storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    )


class CheckpointStore:
    """Uploads and downloads of trial files; a no-op when no artifact store is configured."""

    def __init__(self, location: str | None, study_folder: str = "") -> None:
        self.store: Any = None
        self._latest: dict[tuple[int, str], str] = {}
        if not location:
            return
        if location.startswith("s3://"):
            try:
                self.store = Boto3ArtifactStore(location[5:].strip("/"))
            except ImportError:
                raise KDSearchError(
                    "search.artifact_store: s3:// needs boto3; pip install boto3"
                ) from None
        else:
            path = resolve(location.removeprefix("file://")) / study_folder
            path.mkdir(parents=True, exist_ok=True)
            self.store = FileSystemArtifactStore(path)

    def push(self, study: optuna.Study, trial_id: int, path: Path) -> None:
        """Upload ``path`` for the trial, replacing its previous upload of the same file."""
        if self.store is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            frozen = study._storage.get_trial(trial_id)
            new = upload_artifact(
                artifact_store=self.store,
                file_path=str(path),
                study_or_trial=frozen,
                storage=study._storage,
            )
        old = self._latest.get((trial_id, path.name))
        self._latest[(trial_id, path.name)] = new
        if old:
            self.store.remove(old)

    def drop(self, trial_id: int, name: str) -> None:
        """Delete this process's latest upload of ``name`` for the trial (no longer needed)."""
        artifact = self._latest.pop((trial_id, name), None)
        if artifact:
            self.store.remove(artifact)

    def pull(self, study: optuna.Study, trial_numbers: list[int], path: Path) -> bool:
        """Download the newest ``path.name`` uploaded by any of ``trial_numbers`` (newest
        trial first) to ``path``; False if there is none."""
        if self.store is None or path.exists():
            return False
        for number in reversed(trial_numbers):
            frozen = trial_by_number(study, number)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                metas = get_all_artifact_meta(frozen, storage=study._storage)
                for meta in reversed([m for m in metas if m.filename == path.name]):
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        download_artifact(
                            artifact_store=self.store,
                            file_path=str(path),
                            artifact_id=meta.artifact_id,
                        )
                    except Exception:  # removed as superseded; an older one may still be there
                        continue
                    log.info("downloaded %s of trial %d from the artifact store", path.name, number)
                    return True
        return False

    def remove_all(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Delete every upload of a trial (pruned, or no longer among the best kept)."""
        if self.store is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for meta in get_all_artifact_meta(frozen, storage=study._storage):
                try:
                    self.store.remove(meta.artifact_id)
                except Exception:  # already gone
                    continue
