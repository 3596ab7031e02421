"""The fake AWS environment every local process uses: moto accepts any credentials, and nothing
here may ever reach AWS (no profile, no metadata service, no real endpoint)."""

from __future__ import annotations

from collections.abc import MutableMapping

LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # botocore 1.44 otherwise wants an account id in the credentials for DynamoDB endpoints.
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_REAL_AWS_SETTINGS = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB")


def use_local_aws(environ: MutableMapping[str, str]) -> None:
    """Point `environ` at fake credentials, dropping anything that could select a real account."""
    for name in _REAL_AWS_SETTINGS:
        environ.pop(name, None)
    environ.update(LOCAL_AWS_ENV)
