"""URLs with credentials in them: one redaction for every URL we show (Redis, DashScope).

A URL may carry a password (``http://user:secret@host``, ``rediss://app:s3cret@cache``) or a
secret-looking query value (``?token=...``). Whatever shows a URL — an error message, a
retry warning, a repr, stats, CLI output — shows :func:`redact_url` of it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = ["SECRET_PARAM", "api_address", "redact_url", "url_secrets"]

#: Query parameter names whose values are treated as secrets.
SECRET_PARAM = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)

#: ``scheme://anything@``: the user-info of a URL urlsplit cannot parse.
_USERINFO = re.compile(r"(//)[^/?#]*@")


def redact_url(url: str) -> str:
    """Return ``url`` with its password (and any secret-looking query value) as ``***``.

    A URL that cannot be parsed keeps nothing between ``//`` and ``@``.

    Example:
        >>> redact_url("rediss://app:s3cret@cache.internal:6380/2")
        'rediss://app:***@cache.internal:6380/2'
        >>> redact_url("http://user:secret@127.0.0.1:8000/api/v1?token=t0k")
        'http://user:***@127.0.0.1:8000/api/v1?token=***'
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return _USERINFO.sub(r"\1***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # Without a colon we cannot tell a user name from a password: hide it.
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = [
        (name, "***" if SECRET_PARAM.search(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))


def url_secrets(url: str) -> tuple[str, ...]:
    """The password and secret-looking query values of ``url``, to scrub from messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return ()
    return tuple(
        s
        for s in (
            password,
            *(v for k, v in parse_qsl(parts.query) if SECRET_PARAM.search(k)),
        )
        if s
    )


def api_address(base_url: str) -> str:
    """Return the address rerank requests are sent to, for a ``base_url`` as given.

    The SDK appends the endpoint's path to it, so it must be a plain ``http(s)://host/path``:
    a query string or fragment would end up in front of the path. A ``user:password@`` part
    is dropped: DashScope authenticates with the API key, and an HTTP client would either
    send it in place of the key or refuse the request.

    Raises:
        ConfigurationError: not an ``http``/``https`` URL with a host, or it has a query
            string or fragment (the message shows the URL redacted).

    Example:
        >>> api_address("https://user:secret@dashscope-intl.aliyuncs.com/api/v1/")
        'https://dashscope-intl.aliyuncs.com/api/v1/'
    """
    shown = redact_url(base_url)
    try:
        parts = urlsplit(base_url.strip())
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigurationError(f"base_url is not a valid URL: {shown!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"base_url must be an http:// or https:// URL with a host, got {shown!r} "
            "(e.g. https://dashscope-intl.aliyuncs.com/api/v1)"
        )
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in parts.netloc):
        raise ConfigurationError(
            f"base_url has a space, control character or backslash in its host, got {shown!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"base_url must not have a query string or fragment, got {shown!r}: the API's "
            "path is appended to it"
        )
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
