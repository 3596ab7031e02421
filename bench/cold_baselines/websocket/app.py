"""Baseline for functions/websocket: `$connect` with a token, with boto3 and PyJWT alone.

The same requests as the function's: GetSecretValue for AWSCURRENT, AWSPENDING and AWSPREVIOUS
(a rotation's window verifies with each), then PutItem of the connection.
"""

import json
import os
import time

import boto3
import jwt

dynamodb = boto3.client("dynamodb")
secretsmanager = boto3.client("secretsmanager")
TABLE = os.environ["CONNECTIONS_TABLE_NAME"]
SECRET_ARN = os.environ["REALTIME_SECRET_ARN"]
_keys = []


def signing_keys():
    if not _keys:
        for stage in ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"):
            try:
                value = secretsmanager.get_secret_value(SecretId=SECRET_ARN, VersionStage=stage)["SecretString"]
            except secretsmanager.exceptions.ResourceNotFoundException:
                continue
            if value.encode() not in _keys:
                _keys.append(value.encode())
    return _keys


def lambda_handler(event, context):
    token = (event.get("queryStringParameters") or {}).get("token")
    claims = None
    for key in signing_keys():
        try:
            claims = jwt.decode(token, key, algorithms=["HS256"], options={"require": ["sub", "exp"]})
            break
        except jwt.InvalidTokenError:
            continue
    if claims is None:
        return {"statusCode": 401, "body": json.dumps({"message": "invalid token"})}
    connection_id = event["requestContext"]["connectionId"]
    dynamodb.put_item(
        TableName=TABLE,
        Item={
            "pk": {"S": f"baseline#conn#{connection_id}"},
            "sk": {"S": "meta"},
            "sub": {"S": claims["sub"]},
            "channels": {"S": json.dumps(claims.get("channels", []))},
            "tokenExp": {"N": str(claims["exp"])},
            "ttl": {"N": str(int(time.time()) + 3 * 3600)},
        },
    )
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}
