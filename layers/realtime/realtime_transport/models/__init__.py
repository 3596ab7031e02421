"""Pydantic models, one module per boundary: envelope, stored items, HTTP bodies, stream records,
WebSocket messages."""
