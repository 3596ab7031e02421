"""Baseline for functions/rooms_outbox: a room change from the stream, published on its channel.

The same requests as the function's keyed publish of the change (idempotent on room and version):
GetItem (published already?), UpdateItem (allocate the next position), TransactWriteItems (the
event and its idempotency record).
"""

import json
import os
import time

import boto3

dynamodb = boto3.client("dynamodb")
TABLE = os.environ["EVENTS_TABLE_NAME"]


def publish(channel, key, event_type, data):
    stored = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": key}, "sk": {"N": "0"}}, ConsistentRead=True)
    if "Item" in stored:
        return
    head = dynamodb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": channel}, "sk": {"N": "0"}},
        UpdateExpression="ADD head :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
        ReturnValues="UPDATED_NEW",
    )
    seq = int(head["Attributes"]["head"]["N"])
    envelope = json.dumps({"channel": channel, "seq": seq, "type": event_type, "data": data})
    ttl = {"N": str(int(time.time()) + 7 * 86400)}
    items = [
        {"pk": {"S": channel}, "sk": {"N": str(seq)}, "event": {"S": envelope}, "ttl": ttl},
        {"pk": {"S": key}, "sk": {"N": "0"}, "event": {"S": envelope}, "ttl": ttl},
    ]
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}
            for item in items
        ]
    )


def lambda_handler(event, context):
    failures = []
    for record in event["Records"]:
        image = record["dynamodb"].get("NewImage", {})
        if image.get("kind", {}).get("S") != "room" or "lastChange" not in image:
            continue
        change = json.loads(image["lastChange"]["S"])
        room_id = image["pk"]["S"].rsplit("#", 1)[-1]
        channel = f"baseline#room_{room_id}"
        try:
            publish(channel, f"{channel}#idem#v{change['version']}", change["kind"], change)
        except Exception:
            failures.append({"itemIdentifier": record["dynamodb"]["SequenceNumber"]})
    return {"batchItemFailures": failures}
