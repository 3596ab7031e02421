"""The signing secret's sources, its refresh and rotation window (moto's Secrets Manager), and the
publish tool's SigV4 signing for a deployed API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from realtime_devstack.aws_env import LOCAL_AWS_ENV
from realtime_transport import Settings, tokens
from realtime_transport.cursor import CursorCodec
from realtime_transport.errors import ConfigurationError, InvalidCursor, StoreUnavailable, Unauthorized
from realtime_transport.secrets import (
    AWSPENDING,
    AWSPREVIOUS,
    DEVELOPMENT_SECRET,
    SecretVersions,
    SigningSecret,
    signing_secret,
)
from tests.conftest import LambdaContext, load_function, sample_event

ON_LAMBDA = {"AWS_LAMBDA_FUNCTION_NAME": "realtime-http-api"}
CHANNEL_KEY = "transport#feed_1"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def secretsmanager(aws: Any) -> Any:
    import boto3

    return boto3.client("secretsmanager")


def new_secret(secretsmanager: Any, value: str) -> str:
    arn: str = secretsmanager.create_secret(Name=f"realtime-{time.monotonic_ns()}", SecretString=value)["ARN"]
    return arn


def settings_for(arn: str, **extra: str) -> Settings:
    return Settings.model_validate({"REALTIME_SECRET_ARN": arn, **extra})


def version_of(secretsmanager: Any, arn: str, stage: str) -> str:
    versions = secretsmanager.list_secret_version_ids(SecretId=arn)["Versions"]
    (version,) = [v["VersionId"] for v in versions if stage in v["VersionStages"]]
    return str(version)


def rotate(secretsmanager: Any, arn: str, value: str) -> None:
    """PutSecretValue without VersionStages: AWSCURRENT moves to the new value, AWSPREVIOUS to the old."""
    secretsmanager.put_secret_value(SecretId=arn, SecretString=value)


def token_for(secret: bytes) -> str:
    return tokens.issue(secret, sub="alice", channels=["feed_*"], ttl_seconds=600)


# --- where the secret comes from --------------------------------------------------------------


def test_the_development_secret_is_used_off_lambda_only() -> None:
    assert signing_secret(Settings.model_validate({})).current == DEVELOPMENT_SECRET.encode()
    with pytest.raises(ConfigurationError, match="refusing the development secret"):
        signing_secret(Settings.model_validate(ON_LAMBDA))


def test_an_explicit_secret_wins() -> None:
    settings = Settings.model_validate({"REALTIME_TOKEN_SECRET": "s" * 40, **ON_LAMBDA})
    assert signing_secret(settings).current == b"s" * 40
    assert signing_secret(settings).verifying == (b"s" * 40,)


@pytest.mark.parametrize(("value", "problem"), [(DEVELOPMENT_SECRET, "development secret"), ("", "empty")])
def test_lambda_refuses_the_development_secret_or_nothing_in_the_variable(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        signing_secret(Settings.model_validate({"REALTIME_TOKEN_SECRET": value, **ON_LAMBDA}))


def test_lambda_refuses_the_development_secret_from_secrets_manager(secretsmanager: Any) -> None:
    arn = new_secret(secretsmanager, DEVELOPMENT_SECRET)
    with pytest.raises(ConfigurationError, match="development secret: refusing it on Lambda"):
        _ = signing_secret(settings_for(arn, **ON_LAMBDA)).current
    # Off Lambda (the local stack over moto) the same value is only the development secret.
    assert signing_secret(settings_for(arn)).current == DEVELOPMENT_SECRET.encode()


def test_lambda_refuses_a_rotation_to_the_development_secret(secretsmanager: Any) -> None:
    arn = new_secret(secretsmanager, "a" * 40)
    clock = Clock()
    secret = signing_secret(settings_for(arn, **ON_LAMBDA), clock=clock)
    assert secret.current == b"a" * 40
    rotate(secretsmanager, arn, DEVELOPMENT_SECRET)
    clock.advance(301)
    with pytest.raises(ConfigurationError, match="development secret"):
        _ = secret.current


def test_a_development_secret_left_as_awsprevious_never_verifies_on_lambda(secretsmanager: Any) -> None:
    """Moving off the development secret: what it signed is not accepted for the window."""
    arn = new_secret(secretsmanager, DEVELOPMENT_SECRET)
    rotate(secretsmanager, arn, "b" * 40)
    secret = signing_secret(settings_for(arn, **ON_LAMBDA))
    assert secret.verifying == (b"b" * 40,)
    with pytest.raises(Unauthorized, match="signature"):
        tokens.verify(secret, token_for(DEVELOPMENT_SECRET.encode()))
    # Off Lambda the previous value verifies like any other.
    assert signing_secret(settings_for(arn)).verifying == (b"b" * 40, DEVELOPMENT_SECRET.encode())


def test_an_unreadable_secret_is_a_configuration_error(secretsmanager: Any) -> None:
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:realtime-missing-AbCdEf"
    with pytest.raises(ConfigurationError, match="cannot read the signing secret"):
        _ = signing_secret(settings_for(missing, **ON_LAMBDA)).current


# --- the cache age ----------------------------------------------------------------------------


def test_the_secret_is_read_again_after_its_cache_age(secretsmanager: Any) -> None:
    arn = new_secret(secretsmanager, "a" * 40)
    clock = Clock()
    secret = signing_secret(settings_for(arn, SECRET_CACHE_SECONDS="60", **ON_LAMBDA), clock=clock)
    assert secret.current == b"a" * 40
    rotate(secretsmanager, arn, "b" * 40)
    clock.advance(59)
    assert secret.current == b"a" * 40, "within the cache age the copy serves"
    clock.advance(2)
    assert secret.current == b"b" * 40, "after it, the new value signs"


def test_the_cache_age_defaults_to_five_minutes() -> None:
    assert Settings.model_validate({}).secret_cache_seconds == 300
    with pytest.raises(ConfigurationError, match="SECRET_CACHE_SECONDS"):
        Settings.from_env({"SECRET_CACHE_SECONDS": "0"})


def test_a_failed_refresh_keeps_the_copy_and_tries_again_later() -> None:
    clock = Clock()
    answers: list[SecretVersions | Exception] = [
        SecretVersions(current=b"a" * 40),
        StoreUnavailable("Secrets Manager: ThrottlingException"),
        SecretVersions(current=b"b" * 40),
    ]
    reads: list[float] = []

    def load() -> SecretVersions:
        reads.append(clock.now)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    secret = SigningSecret(load, max_age=300, clock=clock)
    assert secret.current == b"a" * 40
    clock.advance(301)
    assert secret.current == b"a" * 40, "Secrets Manager unreachable: the stale copy serves"
    clock.advance(10)
    assert secret.current == b"a" * 40 and len(reads) == 2, "no read on every request while it is down"
    clock.advance(21)
    assert secret.current == b"b" * 40 and len(reads) == 3


def test_a_first_read_that_fails_is_an_error() -> None:
    def load() -> SecretVersions:
        raise StoreUnavailable("Secrets Manager unreachable")

    with pytest.raises(StoreUnavailable):
        _ = SigningSecret(load, max_age=300).current


# --- rotation: the window of the previous secret -------------------------------------------------


def test_tokens_and_cursors_of_the_previous_secret_verify_while_it_is_awsprevious(secretsmanager: Any) -> None:
    arn = new_secret(secretsmanager, "one" * 12)
    clock = Clock()
    secret = signing_secret(settings_for(arn, **ON_LAMBDA), clock=clock)
    codec = CursorCodec(secret)
    old_token, old_cursor = tokens.issue(secret, sub="alice", channels=["feed_*"]), codec.encode(CHANNEL_KEY, 7)

    rotate(secretsmanager, arn, "two" * 12)  # AWSCURRENT -> two, AWSPREVIOUS -> one
    clock.advance(301)
    assert tokens.verify(secret, old_token).sub == "alice"
    assert codec.decode(CHANNEL_KEY, old_cursor) == 7
    # Signing uses the current value only.
    new_token, new_cursor = tokens.issue(secret, sub="bob", channels=["feed_*"]), codec.encode(CHANNEL_KEY, 8)
    assert tokens.verify(b"two" * 12, new_token).sub == "bob"
    with pytest.raises(Unauthorized):
        tokens.verify(b"one" * 12, new_token)
    assert CursorCodec(b"two" * 12).decode(CHANNEL_KEY, new_cursor) == 8
    with pytest.raises(InvalidCursor):
        CursorCodec(b"one" * 12).decode(CHANNEL_KEY, new_cursor)

    rotate(secretsmanager, arn, "three" * 8)  # AWSPREVIOUS -> two: one is no longer labelled
    clock.advance(301)
    with pytest.raises(Unauthorized, match="signature is invalid"):
        tokens.verify(secret, old_token)
    with pytest.raises(InvalidCursor, match="altered or was not issued here"):
        codec.decode(CHANNEL_KEY, old_cursor)
    assert tokens.verify(secret, new_token).sub == "bob" and codec.decode(CHANNEL_KEY, new_cursor) == 8

    # The window can be closed by hand: take AWSPREVIOUS off the version that carries it.
    previous = version_of(secretsmanager, arn, AWSPREVIOUS)
    secretsmanager.update_secret_version_stage(SecretId=arn, VersionStage=AWSPREVIOUS, RemoveFromVersionId=previous)
    clock.advance(301)
    with pytest.raises(Unauthorized, match="signature is invalid"):
        tokens.verify(secret, new_token)
    with pytest.raises(InvalidCursor):
        codec.decode(CHANNEL_KEY, new_cursor)


def test_a_staged_secret_verifies_before_it_signs(secretsmanager: Any) -> None:
    """The two-step rotation: an instance that has not yet seen AWSCURRENT move already accepts
    what a refreshed instance (or the backend) signs with the new value."""
    arn = new_secret(secretsmanager, "one" * 12)
    clock = Clock()
    lagging = signing_secret(settings_for(arn, **ON_LAMBDA), clock=clock)
    secretsmanager.put_secret_value(SecretId=arn, SecretString="two" * 12, VersionStages=[AWSPENDING])
    clock.advance(301)
    assert lagging.current == b"one" * 12, "AWSPENDING does not sign"
    assert tokens.verify(lagging, token_for(b"two" * 12)).sub == "alice"
    assert CursorCodec(lagging).decode(CHANNEL_KEY, CursorCodec(b"two" * 12).encode(CHANNEL_KEY, 3)) == 3

    pending, current = version_of(secretsmanager, arn, AWSPENDING), version_of(secretsmanager, arn, "AWSCURRENT")
    secretsmanager.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=pending, RemoveFromVersionId=current
    )
    secretsmanager.update_secret_version_stage(SecretId=arn, VersionStage=AWSPENDING, RemoveFromVersionId=pending)
    # Not yet refreshed: both values still verify, the old one signs.
    assert lagging.current == b"one" * 12 and tokens.verify(lagging, token_for(b"two" * 12)).sub == "alice"
    clock.advance(301)
    assert lagging.current == b"two" * 12 and lagging.verifying == (b"two" * 12, b"one" * 12)


# --- through a deployed function: functions/http_api follows the rotation ---------------------------


@pytest.fixture
def http_on_secrets_manager(
    secretsmanager: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Callable[..., tuple[int, Any]]]]:
    """functions/http_api as deployed: the secret from Secrets Manager, history behind the token.
    The cache age is tiny so the function sees each rotation after a short sleep (no hook into it)."""
    from realtime_transport.settings import get_settings

    arn = new_secret(secretsmanager, "one" * 12)
    get_settings.cache_clear()
    monkeypatch.delenv("REALTIME_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("REALTIME_SECRET_ARN", arn)
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0.05")
    monkeypatch.setenv("REQUIRE_HISTORY_TOKEN", "true")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "realtime-http-api")
    module = load_function("http_api")
    module.realtime.channel("feed_42").broadcast(type="t", data=1)

    def history(token: str, cursor: str | None = None) -> tuple[int, Any]:
        event = sample_event("http_get_history")
        event["headers"]["authorization"] = f"Bearer {token}"
        event["queryStringParameters"] = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        response = module.lambda_handler(event, LambdaContext())
        return response["statusCode"], json.loads(response["body"])

    yield arn, history
    get_settings.cache_clear()


def test_the_http_function_follows_a_rotation(secretsmanager: Any, http_on_secrets_manager: Any) -> None:
    arn, history = http_on_secrets_manager
    old_token = token_for(b"one" * 12)
    status, page = history(old_token)
    assert status == 200, page
    old_cursor = page["nextCursor"]

    rotate(secretsmanager, arn, "two" * 12)
    time.sleep(0.1)  # past SECRET_CACHE_SECONDS
    assert history(old_token, old_cursor)[0] == 200, "the previous secret verifies in the window"
    status, page = history(token_for(b"two" * 12))
    assert status == 200
    assert CursorCodec(b"two" * 12).decode("transport#feed_42", page["nextCursor"]) == 1, "new cursors: the new secret"

    rotate(secretsmanager, arn, "three" * 8)
    time.sleep(0.1)
    status, body = history(old_token)
    assert status == 401 and body["error"] == "unauthorized"
    status, body = history(token_for(b"three" * 8), old_cursor)
    assert status == 400 and body["error"] == "invalid_cursor"


def test_the_fanout_signs_live_cursors_with_the_refreshed_secret(secretsmanager: Any) -> None:
    """The fan-out builds its codec once, at import: the codec follows the secret, not a copy of it."""
    from realtime_transport.fanout import Fanout

    arn = new_secret(secretsmanager, "one" * 12)
    fanout = Fanout.from_settings(
        Settings.model_validate(
            {
                "REALTIME_SECRET_ARN": arn,
                "SECRET_CACHE_SECONDS": "0.05",
                "WEBSOCKET_MANAGEMENT_URL": "http://127.0.0.1:9",
                **ON_LAMBDA,
            }
        )
    )
    assert fanout.cursors is not None
    assert CursorCodec(b"one" * 12).decode(CHANNEL_KEY, fanout.cursors.encode(CHANNEL_KEY, 5)) == 5
    rotate(secretsmanager, arn, "two" * 12)
    time.sleep(0.1)  # past SECRET_CACHE_SECONDS
    assert CursorCodec(b"two" * 12).decode(CHANNEL_KEY, fanout.cursors.encode(CHANNEL_KEY, 6)) == 6


# --- tools ------------------------------------------------------------------------------------------


def test_publish_signs_for_execute_api_in_the_apis_region() -> None:
    from realtime_devstack.tools import _is_aws, _sigv4_headers

    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/feeds/42/events"
    assert _is_aws(url) and not _is_aws("http://127.0.0.1:3000/feeds/42/events")
    headers = _sigv4_headers("POST", url, b"{}", {"content-type": "application/json"})
    authorization = headers["Authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={LOCAL_AWS_ENV['AWS_ACCESS_KEY_ID']}/")
    assert "/eu-west-1/execute-api/aws4_request" in authorization
    assert "X-Amz-Date" in headers and headers["X-Amz-Security-Token"] == LOCAL_AWS_ENV["AWS_SESSION_TOKEN"]
