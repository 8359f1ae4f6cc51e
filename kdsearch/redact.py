"""Secrets kept out of everything kdsearch stores, prints or logs: passwords in database URLs.

A storage URL may carry a password (``postgresql://user:secret@host/db``, or
``?password=secret``). kdsearch needs it only to connect; every copy it writes (the spec stored
on a study, its dashboard note and artifact, ``validate``'s output, messages) goes through
:func:`mask_url` first.
"""

from __future__ import annotations

import re

_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass)=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the user info and the query)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            user = rest[:at].split(":", 1)[0]
            rest = f"{user}:***@{rest[at + 1 :]}"
        url = scheme + sep + rest
    return _QUERY_SECRET.sub(r"\1***", url)
