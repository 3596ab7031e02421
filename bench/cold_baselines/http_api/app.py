"""Baseline for functions/http_api: publish an event (idempotent on eventId) with boto3 alone.

The same requests as the function's keyed publish: GetItem (was this eventId stored?), UpdateItem
(allocate the next position), TransactWriteItems (the event and its idempotency record).
"""

import json
import os
import time

import boto3

dynamodb = boto3.client("dynamodb")
TABLE = os.environ["EVENTS_TABLE_NAME"]


def lambda_handler(event, context):
    channel = f"baseline#feed_{event['pathParameters']['feedId']}"
    body = json.loads(event["body"])
    if not isinstance(body.get("eventId"), str) or not isinstance(body.get("type"), str):
        return {"statusCode": 422, "body": json.dumps({"message": "eventId and type are required"})}
    key = f"{channel}#idem#{body['eventId']}"
    stored = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": key}, "sk": {"N": "0"}}, ConsistentRead=True)
    if "Item" in stored:
        return {"statusCode": 200, "body": stored["Item"]["event"]["S"]}
    head = dynamodb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": channel}, "sk": {"N": "0"}},
        UpdateExpression="ADD head :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
        ReturnValues="UPDATED_NEW",
    )
    seq = int(head["Attributes"]["head"]["N"])
    envelope = json.dumps({"channel": channel, "seq": seq, "type": body["type"], "data": body.get("payload")})
    ttl = {"N": str(int(time.time()) + 7 * 86400)}
    dynamodb.transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": {"pk": {"S": channel}, "sk": {"N": str(seq)}, "event": {"S": envelope}, "ttl": ttl},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": {"pk": {"S": key}, "sk": {"N": "0"}, "event": {"S": envelope}, "ttl": ttl},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
    )
    return {"statusCode": 201, "headers": {"Content-Type": "application/json"}, "body": envelope}
