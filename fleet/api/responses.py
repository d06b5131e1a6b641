"""JSON responses for list endpoints whose body is built from models already validated.

FastAPI validates a route's return value against its `response_model` again before
serialising it: for a page of a hundred devices, or a thousand sites' summaries, that second
validation cost as much as the query. A route that builds its body from its own schema
models returns `prevalidated(...)` instead and keeps `response_model` for the OpenAPI schema.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel

# The headers a route set on its injected Response that the returned one must carry.
CARRIED_HEADERS = ("link",)


def prevalidated(body: BaseModel | bytes, headers_from: Response | None = None) -> Response:
    """`body` (a model, or JSON bytes a TypeAdapter dumped) as an application/json response,
    with the Link header the route set on `headers_from`, if any."""
    content = body if isinstance(body, bytes) else body.model_dump_json().encode()
    response = Response(content=content, media_type="application/json")
    if headers_from is not None:
        for name in CARRIED_HEADERS:
            value = headers_from.headers.get(name)
            if value is not None:
                response.headers[name] = value
    return response
