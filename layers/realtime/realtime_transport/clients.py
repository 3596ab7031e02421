"""boto3 clients, made once per cold start.

Endpoints (`AWS_ENDPOINT_URL_DYNAMODB`, ...) and credentials are boto3's own
settings; the local stack and the tests set them in the environment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Standard mode retries throttling and 5xx with backoff; a Lambda behind API
# Gateway's 30 s limit should fail fast rather than hang on a dead connection.
_CLIENT_CONFIG: dict[str, Any] = {
    "retries": {"mode": "standard", "max_attempts": 5},
    "connect_timeout": 2,
    "read_timeout": 5,
    "max_pool_connections": 64,
    "tcp_keepalive": True,
}


@lru_cache(maxsize=1)
def session() -> Any:
    # Imported here: boto3 is the largest import of a cold start and not every
    # request path needs it (validation errors, OpenAPI).
    import boto3

    return boto3.session.Session()


@lru_cache(maxsize=8)
def client(service: str, **overrides: Any) -> Any:
    from botocore.config import Config

    return session().client(service, config=Config(**{**_CLIENT_CONFIG, **overrides}))


def dynamodb() -> DynamoDBClient:
    return client("dynamodb")  # type: ignore[no-any-return,unused-ignore]
