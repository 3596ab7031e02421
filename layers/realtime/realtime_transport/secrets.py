"""The deployment's signing secret (history cursors, subscriber tokens)."""

from __future__ import annotations

from .errors import ConfigurationError
from .settings import Settings

# Shared by the local stack and `realtime-transport token` when no secret is set.
# A function running on Lambda refuses it (see `signing_secret`).
DEVELOPMENT_SECRET = "realtime-transport-development-secret-do-not-deploy"  # noqa: S105


def signing_secret(settings: Settings) -> bytes:
    if settings.secret is not None:
        return settings.secret.get_secret_value().encode()
    if settings.secret_arn:
        # Powertools caches the value per cold start (and refreshes it after max_age).
        from aws_lambda_powertools.utilities.parameters import get_secret

        value = get_secret(settings.secret_arn, max_age=3600)
        return value.encode() if isinstance(value, str) else bytes(value)
    if settings.on_lambda:
        raise ConfigurationError("REALTIME_SECRET_ARN is not set: refusing the development secret on Lambda")
    return DEVELOPMENT_SECRET.encode()
