"""Secrets kept out of everything kdsearch stores, prints or logs: passwords in database URLs.

A storage URL may carry a password (``postgresql://user:secret@host/db``, or
``?password=secret`` / ``?sslpassword=secret``). kdsearch needs it only to connect; every copy
it writes (the spec stored on a study, its dashboard note and artifact, ``validate``'s output,
messages) goes through :func:`mask_url` first, and text that others wrote about a URL (a
database driver's error) goes through :func:`scrub` before it is shown.

Neither may raise: they run on the error path, where an exception would print a traceback
holding the very URL they were asked to hide. A password may hold any character (SQLAlchemy
accepts an unescaped ``/``, ``?``, ``#`` or ``@`` in it), so the user information is taken as
everything between ``://`` and the *last* ``@``, never as what :func:`urllib.parse.urlsplit`
makes of it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

#: What a URL that cannot be taken apart is shown as: never in part.
UNPARSEABLE = "<unparseable URL>"
MASK = "***"
#: A query key naming a secret: password, passwd, pass, sslpassword, pgpassword, secret, token.
_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)
#: Shorter pieces of a password are not searched for in other text: they would match
#: ordinary words (and a piece that short tells little of the password).
_MIN_PIECE = 4


def _split(url: str) -> tuple[str, str | None, str, str]:
    """``url`` as (``scheme://``, user or None without user information, password, the rest
    after the last ``@``). Raises ValueError when there is no scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError("no scheme")
    at = rest.rfind("@")
    if at < 0:
        return scheme + sep, None, "", rest
    user, _, password = rest[:at].partition(":")
    return scheme + sep, user, password, rest[at + 1 :]


def _query_secrets(rest: str) -> list[tuple[int, int]]:
    """(start, end) of each secret query value in ``rest`` (the part after the host)."""
    q = rest.find("?")
    if q < 0:
        return []
    spans, pos = [], q + 1
    for item in rest[q + 1 :].split("&"):
        key, eq, _ = item.partition("=")
        if eq and _SECRET_KEY.search(unquote(key)):
            spans.append((pos + len(key) + 1, pos + len(item)))
        pos += len(item) + 1
    return spans


def mask_url(url: str) -> str:
    """``url`` with every password replaced by ``***``: the user information's and any
    secret-named query value's. A value that is not a URL with a scheme is shown as
    :data:`UNPARSEABLE`. Never raises."""
    try:
        head, user, password, rest = _split(url)
        for start, end in reversed(_query_secrets(rest)):
            rest = rest[:start] + MASK + rest[end:]
        if user is None:
            return head + rest
        return head + (f"{user}:{MASK}@" if password else f"{user}@") + rest
    except Exception:
        return UNPARSEABLE


def secrets(url: str) -> list[str]:
    """Every password ``url`` holds, as written and percent-decoded, and the pieces that a
    parser splitting at ``@``, ``/``, ``?``, ``#`` or ``:`` could have taken for a host, a port
    or a database name (and then quoted in an error). Longest first. Never raises."""
    try:
        _, _, password, rest = _split(url)
        values = [password] + [rest[s:e] for s, e in _query_secrets(rest)]
    except Exception:
        values = [url]
    found: set[str] = set()
    for value in filter(None, values):
        for text in (value, unquote(value)):
            found.add(text)
            found.update(p for p in re.split(r"[@/?#:&=]", text) if len(p) >= _MIN_PIECE)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. a driver's error about ``url``) with ``url``'s passwords, and any piece of
    them, replaced by ``***``. Never raises."""
    try:
        for secret in secrets(url):
            text = text.replace(secret, MASK)
        return text
    except Exception:
        return MASK
