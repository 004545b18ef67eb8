"""Credentials written into a judge's URL (``http://user:secret@host:8001/v1``, e.g. a server behind a proxy with
HTTP basic auth).

The user and password never travel inside the URL: the reachability probe and the openai client get the URL
without them and an ``Authorization: Basic ...`` header instead (percent-encoded characters decoded first, so a
password with ``@`` is written ``%40``). That header replaces the ``Bearer`` API key; a URL without credentials
keeps the key. Whatever vcap prints, logs or writes (messages, ``describe()``, results, the reply cache's record of
who answered) shows the URL masked: ``http://user:***@host:8001/v1``.

A URL is saved as written in ``config.yaml``, ``hparams.yaml`` and checkpoints (a resume or a rerun needs it), so a
password is better written as a placeholder, ``http://user:${JUDGE_PASSWORD}@host:8001/v1``: ``${NAME}`` in the user
or password is read from the environment when the judge connects, and the files keep only the placeholder. A literal
password gets one warning saying so.
"""
from __future__ import annotations

import base64
import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

from vcap.errors import UsageError

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _from_environment(text: str, url: str) -> str:
    """``${NAME}`` replaced by that environment variable; one line naming it when it is not set."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if not os.environ.get(name):  # set but empty is as good as forgotten: never an empty password in silence
            raise UsageError(f"the judge URL {masked(url)} names ${{{name}}}, which is "
                             f"{'empty' if name in os.environ else 'not set'} in the environment: export {name}=... "
                             "before the run")
        return os.environ[name]
    return PLACEHOLDER.sub(value, text)


def has_literal_password(url: str) -> bool:
    """The URL carries a password written out (not only ``${NAME}`` placeholders): it would be saved as written."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return False
    return bool(password) and bool(PLACEHOLDER.sub("", unquote(password)))


def _netloc_without_userinfo(parts) -> str:
    return parts.netloc.rpartition("@")[2]


def without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without ``user:password@`` and the headers that carry them instead (none when it has none)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, {}
    if "@" not in parts.netloc:
        return url, {}
    user = _from_environment(unquote(parts.username or ""), url)
    password = _from_environment(unquote(parts.password or ""), url)
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    clean = urlunsplit(parts._replace(netloc=_netloc_without_userinfo(parts)))
    return clean, {"Authorization": f"Basic {token}"}


def masked(url: str) -> str:
    """The URL as it may be shown: a password in it becomes ``***`` (the user name stays, it tells which account)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2] if "@" in url else url
    if "@" not in parts.netloc:
        return url
    userinfo = parts.netloc.rpartition("@")[0]
    user = userinfo.split(":", 1)[0]
    shown = f"{user}:***" if ":" in userinfo else user
    return urlunsplit(parts._replace(netloc=f"{shown}@{_netloc_without_userinfo(parts)}"))
