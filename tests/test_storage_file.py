"""``KDSEARCH_STORAGE_FILE``: the storage URL read from a file only its owner can read, so a
password never travels in a command line or an environment a scheduler keeps."""

from __future__ import annotations

import optuna

from kdsearch.search.storage import open_storage


def test_every_command_reads_the_url_from_the_file(cli, kd_home):
    url = f"sqlite:///{kd_home}/kd.db"
    optuna.create_study(study_name="filed", storage=open_storage(url))
    secret = kd_home / "storage.url"
    secret.write_text(f"\n{url}\n")
    secret.chmod(0o600)
    env = {"KDSEARCH_STORAGE_FILE": str(secret)}
    shown = cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("filed:")
    # --storage still wins over the file.
    elsewhere = cli("status", "--storage", f"sqlite:///{kd_home}/other.db", env=env)
    assert elsewhere.stdout.strip() == "no studies in this storage"


def test_a_file_others_can_read_or_an_empty_one_is_refused(cli, kd_home):
    secret = kd_home / "storage.url"
    secret.write_text("postgresql://u:hunter2@127.0.0.1/db\n")
    secret.chmod(0o640)
    env = {"KDSEARCH_STORAGE_FILE": str(secret)}
    for refused, hint in (
        (cli("status", env=env), "chmod 600"),
        (cli("status", env={"KDSEARCH_STORAGE_FILE": str(kd_home / "missing")}), "cannot read"),
    ):
        assert refused.returncode == 2
        assert len(refused.stderr.splitlines()) == 1 and hint in refused.stderr, refused.stderr
        assert "hunter2" not in refused.stderr
    secret.write_text("  \n")
    secret.chmod(0o600)
    empty = cli("status", env=env)
    assert empty.returncode == 2 and "is empty" in empty.stderr
    assert not (kd_home / "kdsearch.db").exists()
