"""The base of the library's pydantic models: each builds its validator on first use, not at import.

pydantic builds a model's core schema when its class is created unless `defer_build` is set
("Configuration: defer_build"); with it, a cold start pays only for the models its request uses
(a WebSocket $connect validates no message model, a fan-out no room model).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True)
