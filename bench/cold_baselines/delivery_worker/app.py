"""Baseline for functions/delivery_worker: one shard's frames to its connections, with boto3 alone.

The same requests as the function's: PostToConnection of each group's frames, in order, to each
of its connections (through boto3's apigatewaymanagementapi client; no table, no secret).
"""

import os

import boto3

management = boto3.client("apigatewaymanagementapi", endpoint_url=os.environ["WEBSOCKET_MANAGEMENT_URL"])


def lambda_handler(event, context):
    frames = [frame.encode() for frame in event["frames"]]
    delivered, gone = 0, []
    for group in event["groups"]:
        for connection_id in group["connections"]:
            for index in group["frames"]:
                try:
                    management.post_to_connection(ConnectionId=connection_id, Data=frames[index])
                except management.exceptions.GoneException:
                    gone.append(connection_id)
                    break
                delivered += 1
    return {"delivered": delivered, "gone": gone, "failed": {}}
