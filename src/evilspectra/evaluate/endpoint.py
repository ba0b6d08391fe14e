"""The judge's endpoint (its base URL): checked before any work, and never written with credentials.

A base URL may carry credentials (`http://user:secret@host/v1`, for a proxy with basic auth). The
client needs them; no file, log or cache key may hold them. `public_url` is the form every artefact
records (userinfo removed), and the judge cache is keyed by it, so two servers never share answers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit


def check_base_url(url: str) -> str:
    """`url` when it is an http(s) URL with a host; ValueError naming what was expected otherwise."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"judge base URL {public_url(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"judge base URL {public_url(url)!r} is not an http(s) URL with a host; "
            "expected e.g. http://localhost:8000/v1 or https://api.openai.com/v1"
        )
    return url.strip()


def public_url(url: str | None) -> str | None:
    """`url` without userinfo (user:password@) and without a trailing slash: safe to store."""
    if url is None:
        return None
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # an unparsable URL: drop everything up to a possible '@'
        return url.strip().rpartition("@")[2]
    if "@" not in parts.netloc:
        return url.strip().rstrip("/")
    host = f"[{host}]" if ":" in host else host  # IPv6 literal
    return urlunsplit((parts.scheme, host + port, parts.path, parts.query, parts.fragment)).rstrip("/")


def redact_settings(tree: Any) -> Any:
    """A JSON tree (dumped settings, a sweep spec) with every `judge_base_url` made public_url()."""
    if isinstance(tree, dict):
        return {
            k: public_url(v) if k == "judge_base_url" and isinstance(v, str) else redact_settings(v)
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [redact_settings(v) for v in tree]
    return tree
