"""YAML -> frozen attrs Config. The only module that imports yaml.

(The loader, validation and ``check`` come in this module; the records below are the
contract the rest of the package is written against.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a destination retries: ``attempts`` retries after the first try."""

    attempts: int = 3
    interval: float = 1800.0  # seconds
    backoff: Literal["fixed", "exponential"] = "fixed"
    max: float = 86400.0  # cap for exponential backoff, seconds


@attrs.frozen(kw_only=True)
class BasicAuth:
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class BearerAuth:
    token: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class JwtAuth:
    secret: str = attrs.field(repr=False)
    algorithm: Literal["HS256"] = "HS256"


Auth = BasicAuth | BearerAuth | JwtAuth


@attrs.frozen(kw_only=True)
class UrlDestination:
    """``type: url``: an HTTP callback; ``url`` and ``body`` may hold ``{{placeholder}}``s."""

    name: str
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    format: Literal["json", "form"] = "json"
    body: Mapping[str, str] | None = None  # None: the default JSON body of the event
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    auth: Auth | None = None
    timeout: float = 10.0
    success: frozenset[int] | None = None  # None: any 2xx
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 4
    type: Literal["url"] = "url"


@attrs.frozen(kw_only=True)
class NoneDestination:
    """``type: none``: stored and marked dropped on purpose."""

    name: str
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 1
    type: Literal["none"] = "none"
