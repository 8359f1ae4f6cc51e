"""A password of any characters, on every error path of every command that opens a storage:
one line on stderr, exit 2, no traceback, and the password in no byte of what was printed or
written (issue 33).

SQLAlchemy reads a password with an unescaped ``/``, ``?`` or ``#``, so such a URL reaches the
driver and its errors; ``@`` makes the host ambiguous and is refused with the fix. Each command
runs in-process through :func:`kdsearch.cli.main` (the CLI's own error handling, fast); one
password holding every character also runs as a real process per command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port

from kdsearch import cli as kdcli
from kdsearch.redact import UNPARSEABLE, mask_url, scrub

#: One password per character a URL parser may stumble on, each long enough to be searched for.
PASSWORDS = [f"Kq7{c}zX2v" for c in ("/", "?", "#", "@", "%", " ", "é", "%2F", ":")] + [
    "Kq7/z?X#2@v%w é:ü"
]

COMMANDS: list[Callable[[str, Path], list[str]]] = [
    lambda url, spec: ["create-study", str(spec), "--storage", url],
    lambda url, spec: ["worker", "--study", "synth", "--storage", url, "--devices", "cpu"],
    lambda url, spec: ["status", "--storage", url],
    lambda url, spec: ["export-table", "--study", "synth", "--storage", url],
    lambda url, spec: ["dashboard", "--storage", url, "--port", str(free_port())],
    lambda url, spec: ["storage-proxy", "--storage", url, "--port", str(free_port())],
]


def _servers(password: str) -> dict[str, str]:
    """A URL for a port where nothing listens, and one for the real server refusing the role."""
    return {
        "unreachable": f"postgresql://kd:{password}@127.0.0.1:{free_port()}/kd",
        "refusing": f"postgresql://nosuchrole:{password}@127.0.0.1:5432/kd",
    }


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _assert_clean(code: int, out: str, err: str, password: str, where: str) -> None:
    assert code == 2, (where, code, err)
    assert err.startswith("kdsearch: error: storage") and err.count("\n") == 1, (where, err)
    assert "Traceback" not in out + err, where
    text = (out + err).encode()
    for secret in {password, password.replace("%2F", "/")}:
        assert secret.encode() not in text, (where, err)


@pytest.mark.postgres
@pytest.mark.parametrize("password", PASSWORDS)
def test_no_command_shows_a_password_of_any_character(
    password: str, write_spec, kd_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec()
    before = _files(kd_home)
    for server, url in _servers(password).items():
        for command in COMMANDS:
            argv = command(url, spec)
            code = kdcli.main(argv)
            captured = capsys.readouterr()
            _assert_clean(code, captured.out, captured.err, password, f"{server} {argv[0]}")
    assert _files(kd_home) == before  # nothing written, so nothing to leak either


@pytest.mark.postgres
@pytest.mark.slow
def test_a_real_process_shows_no_password_either(cli, write_spec, kd_home: Path) -> None:
    """The same through ``python -m kdsearch`` (logging and stderr as a user gets them)."""
    password = PASSWORDS[-1].replace("@", "")  # '@' is refused before any connection
    spec = write_spec()
    before = _files(kd_home)
    for command in COMMANDS:
        argv = command(_servers(password)["refusing"], spec)
        out: subprocess.CompletedProcess[str] = cli(*argv)
        _assert_clean(out.returncode, out.stdout, out.stderr, password, argv[0])
    assert _files(kd_home) == before


def test_an_unescaped_at_sign_is_refused_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code = kdcli.main(["status", "--storage", "postgresql://kd:p@ss@127.0.0.1/kd"])
    err = capsys.readouterr().err
    assert code == 2 and "unescaped '@'" in err and "%40" in err, err
    assert "p@ss" not in err and "ss@127" not in err


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://kd:pa/ss@db/kd", "postgresql://kd:***@db/kd"),
        ("postgresql://kd:p?a#ss@db:5432/kd", "postgresql://kd:***@db:5432/kd"),
        (
            "postgresql://db/kd?sslmode=require&sslpassword=s3c",
            "postgresql://db/kd?sslmode=require&sslpassword=***",
        ),
        ("postgresql://db/kd?PGPASSWORD=s3c&x=1", "postgresql://db/kd?PGPASSWORD=***&x=1"),
        ("postgresql://db/kd?ssl%70assword=s3c", "postgresql://db/kd?ssl%70assword=***"),
        ("no scheme at all: p4ss", UNPARSEABLE),
        ("://nothing", UNPARSEABLE),
    ],
)
def test_mask_url_hides_passwords_a_parser_would_split(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_and_scrub_never_raise() -> None:
    for value in (None, 3, b"postgresql://a:b@c/d"):
        assert mask_url(value) == UNPARSEABLE  # type: ignore[arg-type]
        assert isinstance(scrub("text", value), str)  # type: ignore[arg-type]


def test_scrub_removes_the_password_and_the_pieces_a_parser_quotes() -> None:
    url = "postgresql://kd:Kq7z/Xw2v?Rt9#Pl0m@db/kd"
    reason = 'invalid port "Pl0m@db" and "Kq7z/Xw2v?Rt9#Pl0m", decoded Rt9'
    assert scrub(reason, url) == 'invalid port "***@db" and "***", decoded Rt9'
    assert scrub("user p@ss w rejected", "postgresql://kd:p%40ss%20w@db/kd") == "user *** rejected"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # Found by mutation testing (docs/testing.md): each was a leak under one mutant.
        ("postgresql://kd:pw1@db/kd?opt=http://x", "postgresql://kd:***@db/kd?opt=http://x"),
        ("postgresql://db/kd?sslpassword=a?b&x=1", "postgresql://db/kd?sslpassword=***&x=1"),
        ("postgresql://?password=s3c", "postgresql://?password=***"),
        ("postgresql://db/kd?password=ab=cd", "postgresql://db/kd?password=***"),
    ],
)
def test_mask_url_at_the_edges_of_its_parsing(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_of_an_unparseable_url_hides_only_it() -> None:
    assert scrub("host garbage-url refused", "garbage-url") == "host *** refused"
