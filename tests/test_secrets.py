"""A password in a spec's storage URL never reaches what a study exposes or a command prints."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from kdsearch.redact import mask_url
from kdsearch.search.storage import open_storage

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://kd:s3cret@db:5432/kd", "postgresql://kd:***@db:5432/kd"),
        ("postgresql://:s3cret@db/kd", "postgresql://:***@db/kd"),
        ("postgresql://kd:p@ss@db/kd", "postgresql://kd:***@db/kd"),  # an unescaped @
        (
            "postgresql://db/kd?user=kd&password=s3cret&x=1",
            "postgresql://db/kd?user=kd&password=***&x=1",
        ),
        ("postgresql://kd@db/kd", "postgresql://kd@db/kd"),
        ("sqlite:///kd.db", "sqlite:///kd.db"),
    ],
)
def test_mask_url_hides_every_password_form(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.postgres
def test_a_spec_password_leaves_no_trace(cli, write_spec, kd_home: Path, pg_url: str) -> None:
    """The spec names its own PostgreSQL storage with a password (trust auth accepts it): the
    study, its note and spec.yaml artifact, and every command's output stay free of it."""
    url = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    artifacts = kd_home / "artifacts"
    spec = write_spec({"search": {"artifact_store": str(artifacts)}})
    data = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({**data, "storage": url}, sort_keys=False))
    outputs = [
        cli("validate", str(spec)),
        cli("validate", str(spec), "--json"),
        cli("create-study", str(spec)),  # the spec's own storage: it must connect with it
        cli("status", "--storage", url),
        cli("export-table", "--study", "synth", "--storage", url),
    ]
    for out in outputs:
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr, out.args
    assert "postgres:***@" in outputs[0].stdout
    study = optuna.load_study(study_name="synth", storage=open_storage(pg_url))
    system = study._storage.get_study_system_attrs(study._study_id)  # the dashboard note
    stored = repr(study.user_attrs) + repr(system)
    assert "postgres:***@" in stored and SECRET not in stored
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert files and not [p for p in files if SECRET.encode() in p.read_bytes()]
    # Stored in SQLite instead (--storage wins), the database file itself holds no trace.
    assert cli("create-study", str(spec), "--storage", "sqlite:///kd.db").returncode == 0
    assert SECRET.encode() not in (kd_home / "kd.db").read_bytes()
