"""Baseline for functions/fanout: a stream batch to every subscriber, with boto3 alone.

The same requests as the function's: one consistent BatchGetItem of the channel's 16 bucket
version items and its legacy one (a warm instance re-reads only the buckets that moved), a Query
of the `by-channel` index per partition key value the function reads (BASELINE_INDEX_QUERIES,
which the bench sets from the function's own count: its index keys are `{channel}#{bucket}` and
the bare channel key), GetSecretValue for AWSCURRENT, AWSPENDING and AWSPREVIOUS (the cursor in
each frame is signed), and PostToConnection per subscriber, through boto3's
apigatewaymanagementapi client.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os

import boto3

dynamodb = boto3.client("dynamodb")
secretsmanager = boto3.client("secretsmanager")
management = boto3.client("apigatewaymanagementapi", endpoint_url=os.environ["WEBSOCKET_MANAGEMENT_URL"])
TABLE = os.environ["CONNECTIONS_TABLE_NAME"]
SECRET_ARN = os.environ["REALTIME_SECRET_ARN"]
QUERIES = int(os.environ.get("BASELINE_INDEX_QUERIES", "1"))
_secret = []


def signing_key():
    if not _secret:
        for stage in ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"):
            try:
                _secret.append(secretsmanager.get_secret_value(SecretId=SECRET_ARN, VersionStage=stage)["SecretString"])
            except secretsmanager.exceptions.ResourceNotFoundException:
                continue
    return _secret[0].encode()


def subscribers(channel_key):
    versions = [f"chan#{channel_key}#{bucket}" for bucket in range(16)] + [f"chan#{channel_key}"]
    dynamodb.batch_get_item(
        RequestItems={
            TABLE: {"Keys": [{"pk": {"S": pk}, "sk": {"S": "version"}} for pk in versions], "ConsistentRead": True}
        }
    )
    keys = [f"{channel_key}#{bucket}" for bucket in range(QUERIES - 1)] + [channel_key]
    found = []
    for key in keys:
        pages = dynamodb.get_paginator("query").paginate(
            TableName=TABLE,
            IndexName="by-channel",
            KeyConditionExpression="channel = :c",
            ExpressionAttributeValues={":c": {"S": key}},
        )
        found += [item["connectionId"]["S"] for page in pages for item in page["Items"]]
    return found


def lambda_handler(event, context):
    for record in event["Records"]:
        image = record["dynamodb"].get("NewImage", {})
        if record["eventName"] != "INSERT" or image.get("kind", {}).get("S") != "event":
            continue
        channel_key, seq = image["pk"]["S"], int(image["sk"]["N"])
        envelope = json.loads(image["event"]["S"])
        mac = hmac.new(signing_key(), f"{channel_key}:{seq}".encode(), hashlib.sha256).digest()[:16]
        cursor = base64.urlsafe_b64encode(seq.to_bytes(8, "big") + mac).decode()
        frame = json.dumps({"type": "event", "channel": envelope["channel"], "event": envelope, "cursor": cursor})
        for connection_id in subscribers(channel_key):
            with contextlib.suppress(management.exceptions.GoneException):
                management.post_to_connection(ConnectionId=connection_id, Data=frame.encode())
    return {"batchItemFailures": []}
