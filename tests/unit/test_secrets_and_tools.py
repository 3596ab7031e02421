"""The signing secret's sources, and the publish tool's SigV4 signing for a deployed API."""

from __future__ import annotations

import pytest

from realtime_devstack.aws_env import LOCAL_AWS_ENV
from realtime_transport import Settings
from realtime_transport.errors import ConfigurationError
from realtime_transport.secrets import DEVELOPMENT_SECRET, signing_secret


def test_the_development_secret_is_used_off_lambda_only() -> None:
    assert signing_secret(Settings.model_validate({})) == DEVELOPMENT_SECRET.encode()
    on_lambda = Settings.model_validate({"AWS_LAMBDA_FUNCTION_NAME": "realtime-http-api"})
    with pytest.raises(ConfigurationError, match="refusing the development secret"):
        signing_secret(on_lambda)


def test_an_explicit_secret_wins() -> None:
    settings = Settings.model_validate({"REALTIME_TOKEN_SECRET": "s" * 40, "AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert signing_secret(settings) == b"s" * 40


def test_publish_signs_for_execute_api_in_the_apis_region() -> None:
    from realtime_devstack.tools import _is_aws, _sigv4_headers

    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/feeds/42/events"
    assert _is_aws(url) and not _is_aws("http://127.0.0.1:3000/feeds/42/events")
    headers = _sigv4_headers("POST", url, b"{}", {"content-type": "application/json"})
    authorization = headers["Authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={LOCAL_AWS_ENV['AWS_ACCESS_KEY_ID']}/")
    assert "/eu-west-1/execute-api/aws4_request" in authorization
    assert "X-Amz-Date" in headers and headers["X-Amz-Security-Token"] == LOCAL_AWS_ENV["AWS_SESSION_TOKEN"]
