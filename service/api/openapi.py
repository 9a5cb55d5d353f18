"""`python -m service.api.openapi` prints the OpenAPI document (`make openapi`)."""

from __future__ import annotations

import json
from typing import Any

from service.api.app import create_app
from service.config import Settings


def openapi_document() -> dict[str, Any]:
    # The document does not depend on settings; the lifespan (and so the store) never runs.
    return create_app(Settings()).openapi()


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
