"""Every secret is masked here, and only here: passwords in URLs, signed query strings, storage
options, tokens and keys, and the values of the credential variables in the environment.

Whatever leaves the process goes through it: log lines, error lines, the manifest, the JSON and
HTML reports, metrics labels, lineage events and ``serve``'s errors and logs. Values known to be
secret (storage options of the run, credentials from the environment) are remembered once
(``remember``) and masked wherever they appear, even outside a URL.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Variables whose values are credentials wherever they appear (AWS, MLflow, OpenLineage, Azure,
# Google, Dask's TLS key password): masked in every output even when a library echoes them.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "OPENLINEAGE_API_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "PYICEBERG_CATALOG__DEFAULT__CREDENTIAL",
    "PYICEBERG_CATALOG__DEFAULT__TOKEN",
)
# A setting or query parameter whose name says it holds a secret (key, token, password, ...).
_SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|credential|signature|^sig$|api[-_]?key|access[-_]?key"
    r"|private[-_]?key|session[-_]?key|^key$|auth(orization)?$|x-amz-security-token"
    r"|x-amz-credential|sas[-_]?token|^sas$)",
    re.IGNORECASE,
)
# scheme://user:password@host or scheme://token@host: the userinfo part
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# user:password@host with the scheme already stripped (as a library may echo a path)
_BARE_USERINFO = re.compile(r"(?<![\w/:@])(?P<userinfo>[^\s/@:'\"]+:[^\s/@'\"]+)@(?=[\w.\-])")
# ?name=value pairs whose name is secret-looking, in free text
_QUERY_SECRET = re.compile(r"(?P<name>[?&;][A-Za-z0-9_.\-]+)=(?P<value>[^&\s'\"#]+)")
_MIN_SECRET = 4  # shorter values ("s3", "yes") would mask ordinary words

_remembered: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Whether a setting, header or query parameter of this name holds a secret."""
    return bool(_SECRET_NAME.search(name))


def remember(values: Iterable[Any]) -> None:
    """Mask these values (strings, or nested dicts/lists of them) in everything written from now."""

    def collect(value: Any) -> None:
        if isinstance(value, str) and len(value) >= _MIN_SECRET:
            _remembered.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple | set):
            for item in value:
                collect(item)

    for value in values:
        collect(value)


def remember_environment() -> None:
    """The credentials in the environment (``SECRET_VARIABLES``) are secrets wherever they go."""
    remember(os.environ.get(name, "") for name in SECRET_VARIABLES)
    remember(v for k, v in os.environ.items() if k.startswith("PYICEBERG_") and is_secret_name(k))


def remember_config(data: Any) -> None:
    """Every storage option value and every secret-named setting of a config, as plain data."""

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                named = isinstance(item, str) and is_secret_name(str(key))
                walk(item, secret or key == "storage_options" or named)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        elif isinstance(value, str):
            if secret:
                remember([value])
            for match in _USERINFO.finditer(value):
                remember([match.group("userinfo")])
                remember(match.group("userinfo").split(":", 1)[1:])

    walk(data, False)


def redact_url(url: str) -> str:
    """The URL with its userinfo (``user:password@``) and secret query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*")
    return redact_text(urlunsplit(parts._replace(netloc=netloc, query=query)))


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """The URL without ``user:password@``, and the user and password it held (basic auth, or
    a dataset's name, which never carries credentials)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if "@" not in parts.netloc:
        return url, None, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return bare, parts.username, parts.password


def redact_text(text: str) -> str:
    """Free text (a log line, an error, a traceback) with every secret we know of masked."""
    for secret in sorted(_remembered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _BARE_USERINFO.sub(f"{MASK}@", text)
    return _QUERY_SECRET.sub(
        lambda m: f"{m.group('name')}={MASK}" if is_secret_name(m.group("name")[1:]) else m[0],
        text,
    )


def redact_data(value: Any, secret: bool = False) -> Any:
    """Plain data (a config, a manifest, run facts) with secrets masked: every value of a
    ``storage_options`` mapping or of a secret-named key, and secrets inside any string."""
    if isinstance(value, dict):
        return {key: _redact_item(str(key), item, secret) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item, secret) for item in value]
    if isinstance(value, str):
        return MASK if secret and value else redact_text(value)
    return value


def _redact_item(key: str, item: Any, secret: bool) -> Any:
    if key == "storage_options":
        return redact_data(item, True)
    if isinstance(item, str) and is_secret_name(key):
        return MASK if item else item
    return redact_data(item, secret)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message (and its traceback) with the secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install() -> None:
    """Mask secrets in every handler of the root logger (once per handler)."""
    remember_environment()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
