"""Baseline for functions/presence_sweeper: one pass over the `by-deadline` index, with boto3 alone.

The same requests as the function's pass when nothing is due: a Query of each of the 16 sweep
shards (`sweep#{n}`, deadline at or before now).
"""

import os
import time

import boto3

dynamodb = boto3.client("dynamodb")
TABLE = os.environ["CONNECTIONS_TABLE_NAME"]
SHARDS = 16


def lambda_handler(event, context):
    now = str(time.time())
    due = []
    for shard in range(SHARDS):
        pages = dynamodb.get_paginator("query").paginate(
            TableName=TABLE,
            IndexName="by-deadline",
            KeyConditionExpression="sweep = :s AND deadline <= :now",
            ExpressionAttributeValues={":s": {"S": f"sweep#{shard}"}, ":now": {"N": now}},
        )
        due += [item for page in pages for item in page["Items"]]
    return {"passes": 1}
