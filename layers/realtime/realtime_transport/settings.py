"""Settings: one validated model, read from the environment once per cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .errors import ConfigurationError
from .limits import MAX_MESSAGE_BYTES


class Settings(BaseModel):
    """Everything the library reads from its environment, validated up front.

    Endpoints, credentials and retry policy are boto3's own settings
    (`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_RETRY_MODE`, ...), not ours.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    events_table_name: str = Field("realtime-events", alias="EVENTS_TABLE_NAME", min_length=3)
    connections_table_name: str = Field("realtime-connections", alias="CONNECTIONS_TABLE_NAME", min_length=3)
    name: str = Field("transport", alias="REALTIME_NAME", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    history_limit: int = Field(500, alias="HISTORY_LIMIT", ge=1, le=10_000)
    history_ttl_hours: float = Field(168.0, alias="HISTORY_TTL_HOURS", gt=0)
    idempotency_ttl_hours: float = Field(168.0, alias="IDEMPOTENCY_TTL_HOURS", gt=0)
    # The largest event as a subscriber receives it: the whole WebSocket frame (envelope,
    # channel, cursor). API Gateway refuses a message over 128 KB ("Quotas for configuring and
    # running a WebSocket in API Gateway"); 128,000 bytes is the reading that is safe either way.
    max_event_bytes: int = Field(64 * 1024, alias="MAX_EVENT_BYTES", ge=1024, le=MAX_MESSAGE_BYTES)
    # A position allocated longer ago than this belongs to a writer that died (the
    # ingest function's timeout); readers then tombstone it instead of waiting.
    writer_timeout_seconds: float = Field(10.0, alias="WRITER_TIMEOUT_SECONDS", gt=0)
    # Presence (rooms/presence.py). A member whose last connection closed is still listed for the
    # grace period (a reload within it causes no leave and no join); a connection in a room that
    # sent no heartbeat for the lease is suspect and the sweeper, passing every sweep interval,
    # asks API Gateway about it. A vanished socket becomes a leave within lease + sweep + index lag.
    presence_grace_seconds: float = Field(10.0, alias="PRESENCE_GRACE_SECONDS", gt=0)
    presence_lease_seconds: float = Field(30.0, alias="PRESENCE_LEASE_SECONDS", gt=0)
    presence_sweep_seconds: float = Field(10.0, alias="PRESENCE_SWEEP_SECONDS", gt=0)
    # On AWS the signing secret lives in Secrets Manager; locally it may be given directly.
    secret_arn: str | None = Field(None, alias="REALTIME_SECRET_ARN")
    secret: SecretStr | None = Field(None, alias="REALTIME_TOKEN_SECRET")
    # How long an instance signs and verifies with its copy of the Secrets Manager secret before
    # reading it again: a rotation reaches every warm instance within this (secrets.py).
    secret_cache_seconds: float = Field(300.0, alias="SECRET_CACHE_SECONDS", gt=0, le=86_400)
    # The API Gateway management endpoint (https://{api}.execute-api.{region}.amazonaws.com/{stage});
    # the local stack serves it on its own port.
    websocket_management_url: str | None = Field(None, alias="WEBSOCKET_MANAGEMENT_URL")
    # Browsers read history with their subscriber token (on AWS that route takes it instead of IAM).
    require_history_token: bool = Field(False, alias="REQUIRE_HISTORY_TOKEN")
    # Sharded delivery (fanout.py, workers.py): a batch reaching more than FANOUT_SHARD_SIZE
    # connections is cut into shards of at most that many, each delivered by the worker function
    # DELIVERY_WORKER_FUNCTION (unset: never sharded). A warm fan-out trusts its cached subscribers
    # of a channel only if read SUBSCRIBER_CACHE_SETTLE_SECONDS after the channel's last
    # (un)subscribe: the index lags its table.
    fanout_shard_size: int = Field(2000, alias="FANOUT_SHARD_SIZE", ge=1, le=100_000)
    delivery_worker_function: str | None = Field(None, alias="DELIVERY_WORKER_FUNCTION", min_length=1)
    subscriber_cache_settle_seconds: float = Field(2.0, alias="SUBSCRIBER_CACHE_SETTLE_SECONDS", ge=0, le=3600)
    # The built-in development secret is only acceptable off Lambda.
    on_lambda: bool = Field(False, alias="AWS_LAMBDA_FUNCTION_NAME")

    @model_validator(mode="before")
    @classmethod
    def _lambda_flag(cls, values: object) -> object:
        if isinstance(values, Mapping) and "AWS_LAMBDA_FUNCTION_NAME" in values:
            values = dict(values)
            values["AWS_LAMBDA_FUNCTION_NAME"] = bool(values["AWS_LAMBDA_FUNCTION_NAME"])
        return values

    @property
    def idempotency_ttl_seconds(self) -> int:
        # Keys outlive the history they protect, whatever the two settings say.
        return int(max(self.idempotency_ttl_hours, self.history_ttl_hours) * 3600)

    @property
    def history_ttl_seconds(self) -> int:
        return int(self.history_ttl_hours * 3600)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        try:
            return cls.model_validate(env)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid settings: {exc}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (one read per cold start)."""
    return Settings.from_env()
