"""Keep credentials and storage options out of logs, error lines and tracebacks.

Every string value of the run's storage options, and the AWS credentials in the environment,
is replaced by ``***`` in whatever a log handler or the CLI writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

AWS_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def secret_values(storage_options: Iterable[dict[str, Any]]) -> set[str]:
    values: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            values.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)

    for options in storage_options:
        collect(options)
    values.update(v for k in AWS_SECRETS if len(v := os.environ.get(k, "")) >= 4)
    return values


def redact(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message with the secrets masked."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
        return True


def install(secrets: set[str]) -> None:
    """Mask ``secrets`` in every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(secrets))
