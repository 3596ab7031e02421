"""The deployment's signing secret (history cursors, subscriber tokens), and its rotation.

On AWS the secret is a Secrets Manager secret (`REALTIME_SECRET_ARN`). A `SigningSecret` reads
it again when its copy is older than `SECRET_CACHE_SECONDS`, so a rotated value reaches every
warm instance without a redeploy. Secrets Manager tracks a secret's versions with staging labels
("Rotate AWS Secrets Manager secrets", "Secrets Manager concepts: version"): AWSCURRENT is the
value in use, AWSPENDING a value staged for a rotation, and when AWSCURRENT moves to another
version Secrets Manager moves AWSPREVIOUS to the version it left. Hence:

- signing (tokens, cursors) always uses AWSCURRENT;
- verification accepts AWSCURRENT, AWSPENDING (staged, not yet current: an instance that has
  not yet seen the move already accepts what a refreshed one signs) and AWSPREVIOUS (tokens and
  cursors signed before the move still verify), as long as those labels stay where they are.
  The window closes when AWSPREVIOUS moves on (the next rotation) or is removed by hand, at the
  latest SECRET_CACHE_SECONDS later on every instance.

Off AWS the secret may be given directly (`REALTIME_TOKEN_SECRET`), or the built-in development
secret signs everything. A function running on Lambda refuses the development secret whichever
way it arrives (the variable set to it, or a Secrets Manager value equal to it): its value is in
this repository, so anybody could mint tokens and cursors with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, StoreUnavailable
from .observability import logger
from .settings import Settings

# Shared by the local stack and `realtime-transport token` when no secret is set.
# A function running on Lambda refuses it (see `signing_secret`).
DEVELOPMENT_SECRET = "realtime-transport-development-secret-do-not-deploy"  # noqa: S105

# Secrets Manager's staging labels ("Secrets Manager concepts: version").
AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"

# After a failed re-read the stale copy serves this long before the next try (at most the cache age),
# so an outage of Secrets Manager costs one call per interval, not one per request.
_RETRY_SECONDS = 30.0
# Secrets Manager errors that say "try again later", not "this is misconfigured"
# (GetSecretValue's errors in the Secrets Manager API Reference).
_TRANSIENT = {"InternalServiceError", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}


@dataclass(frozen=True)
class SecretVersions:
    """The values a deployment signs and verifies with at one moment."""

    current: bytes
    # Staged (AWSPENDING) and superseded (AWSPREVIOUS) values, accepted for verification only.
    others: tuple[bytes, ...] = ()

    @property
    def verifying(self) -> tuple[bytes, ...]:
        """The current value first (the common case costs one HMAC), then the others, without repeats."""
        return tuple(dict.fromkeys((self.current, *self.others)))


class SigningSecret:
    """The deployment's signing secret as it is now: `current` signs, `verifying` verifies.

    `load` reads the versions; they are read again on the first use after `max_age` seconds
    (by `clock`, monotonic by default). A fixed secret (`SigningSecret.fixed`) never changes.
    """

    def __init__(
        self,
        load: Callable[[], SecretVersions],
        *,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._max_age = max_age
        self._clock = clock
        self._versions: SecretVersions | None = None
        self._fresh_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def fixed(cls, secret: bytes) -> SigningSecret:
        versions = SecretVersions(current=secret)
        return cls(lambda: versions, max_age=float("inf"))

    def versions(self) -> SecretVersions:
        versions = self._versions
        if versions is not None and self._clock() < self._fresh_until:
            return versions
        with self._lock:  # the fan-out signs from worker threads: one read per expiry
            if self._versions is not None and self._clock() < self._fresh_until:
                return self._versions
            return self._refresh()

    def _refresh(self) -> SecretVersions:
        try:
            versions = self._load()
        except StoreUnavailable as exc:
            if self._versions is None:
                raise
            # Secrets Manager is unreachable: the copy we have is still the best there is.
            logger.warning("signing secret not refreshed; using the cached copy", extra={"error": exc.message})
            self._fresh_until = self._clock() + min(self._max_age, _RETRY_SECONDS)
            return self._versions
        self._versions = versions
        self._fresh_until = self._clock() + self._max_age
        return versions

    @property
    def current(self) -> bytes:
        """The value that signs (AWSCURRENT)."""
        return self.versions().current

    @property
    def verifying(self) -> tuple[bytes, ...]:
        """Every value a token or cursor may be signed with, the current one first."""
        return self.versions().verifying


def signing_secret(settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> SigningSecret:
    """The deployment's signing secret: REALTIME_TOKEN_SECRET, else the Secrets Manager secret
    REALTIME_SECRET_ARN (read on first use and again after SECRET_CACHE_SECONDS), else, off
    Lambda only, the development secret. `ConfigurationError` when none is acceptable.
    `clock` (seconds, monotonic) times the cache; tests inject one."""
    if settings.secret is not None:
        value = settings.secret.get_secret_value().encode()
        _refuse_unusable(value, settings, "REALTIME_TOKEN_SECRET")
        return SigningSecret.fixed(value)
    if settings.secret_arn:
        arn = settings.secret_arn
        return SigningSecret(lambda: read_versions(arn, settings), max_age=settings.secret_cache_seconds, clock=clock)
    if settings.on_lambda:
        raise ConfigurationError("REALTIME_SECRET_ARN is not set: refusing the development secret on Lambda")
    return SigningSecret.fixed(DEVELOPMENT_SECRET.encode())


def _refuse_unusable(value: bytes, settings: Settings, source: str) -> None:
    if not value:
        raise ConfigurationError(f"{source} is empty: refusing to sign with an empty secret")
    if settings.on_lambda and value == DEVELOPMENT_SECRET.encode():
        raise ConfigurationError(f"{source} is the development secret: refusing it on Lambda")


def read_versions(arn: str, settings: Settings, client: Any | None = None) -> SecretVersions:
    """AWSCURRENT, and AWSPENDING and AWSPREVIOUS where a version carries them, of the secret `arn`.

    GetSecretValue with a VersionStage is the same action (`secretsmanager:GetSecretValue`) as
    without one; a label no version carries is a ResourceNotFoundException.
    """
    from .clients import client as make_client

    secretsmanager = client or make_client("secretsmanager")
    current = _value(secretsmanager, arn, AWSCURRENT) or b""
    _refuse_unusable(current, settings, f"the {AWSCURRENT} value of {arn}")
    others = []
    for stage in (AWSPENDING, AWSPREVIOUS):
        value = _value(secretsmanager, arn, stage)
        if value is None or value == current:
            continue
        if not value or (settings.on_lambda and value == DEVELOPMENT_SECRET.encode()):
            # Verifying with it would let anybody mint tokens: leave it out, the service goes on.
            logger.warning("ignoring an unusable staged signing secret", extra={"stage": stage, "secret": arn})
            continue
        others.append(value)
    return SecretVersions(current=current, others=tuple(others))


def _value(secretsmanager: Any, arn: str, stage: str) -> bytes | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = secretsmanager.get_secret_value(SecretId=arn, VersionStage=stage)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException" and stage != AWSCURRENT:
            return None  # no version carries this label (before the first rotation, say)
        if code in _TRANSIENT:
            raise StoreUnavailable(f"Secrets Manager: {code}") from exc
        raise ConfigurationError(f"cannot read the signing secret {arn} ({stage}): {code}") from exc
    except BotoCoreError as exc:  # endpoint unreachable, timeouts after botocore's retries
        raise StoreUnavailable(f"Secrets Manager unreachable: {exc}") from exc
    if response.get("SecretString") is not None:
        return str(response["SecretString"]).encode()
    return bytes(response.get("SecretBinary") or b"")
