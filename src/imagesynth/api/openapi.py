"""What the OpenAPI document (/openapi.json, /docs) says each operation takes.

The routes read their bodies and query parameters by hand (api/context.py read_json_object,
query_text), so that every refusal is a DashScope error shape with its own message; FastAPI
therefore sees no parameters to document. Each route declares them here instead, through
`openapi_extra`: documentation only, nothing here validates a request.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from imagesynth.api.openai_errors import PREFIX as OPENAI_PREFIX
from imagesynth.api.openai_schemas import OpenAIErrorReply
from imagesynth.api.schemas import ErrorReply

_REF = "#/components/schemas/{model}"
_BEARER: dict[str, list[str]] = {"bearer": []}


def _schema_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def query(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


WORKSPACE = header("X-DashScope-WorkSpace", "Recorded on the task; filters the task list.")
CALLBACK_URL = header(
    "X-ImageSynth-Callback-URL",
    "Beyond DashScope: a URL sent the task's end, signed per Standard Webhooks "
    "(docs/webhooks.md); http(s), public addresses only.",
)


def operation(
    *,
    body: type[BaseModel] | None = None,
    form: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    """`openapi_extra` for a route: its JSON body model or multipart form schema, its query
    and header parameters, and whether it takes a bearer credential."""
    extra: dict[str, Any] = {}
    if body is not None:
        _DOCUMENTED.append(body)
        extra["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(body)}},
        }
    if form is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    if parameters:
        extra["parameters"] = parameters
    if auth:
        extra["security"] = [_BEARER]
    return extra


_DOCUMENTED: list[type[BaseModel]] = [ErrorReply, OpenAIErrorReply]


def install(app: FastAPI) -> None:
    """Make app.openapi() add the documented models, the bearer scheme, and the error shape as
    every operation's answer for 4xx and 5xx."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in _DOCUMENTED:
            schema = model.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        doc["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (sk-...), or on /admin/v1 the admin credential.",
            }
        }
        error = {
            "description": "An error in DashScope's shape.",
            "content": {"application/json": {"schema": _schema_ref(ErrorReply)}},
        }
        openai_error = {
            "description": "An error in OpenAI's shape.",
            "content": {"application/json": {"schema": _schema_ref(OpenAIErrorReply)}},
        }
        for name, path in doc["paths"].items():
            shape = openai_error if name.startswith(OPENAI_PREFIX) else error
            for op in path.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)  # FastAPI's own validation reply, never sent here
                responses.setdefault("4XX", shape)
                responses.setdefault("5XX", shape)
        for unused in ("HTTPValidationError", "ValidationError"):  # only the 422s used them
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
