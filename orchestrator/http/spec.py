"""The route table and the OpenAPI 3.1 document generated from it.

Each endpoint is declared once, as a `Route`: the app registers its handler from the same
record the document is built from, and the schemas come from the pydantic models
(`model_json_schema`), so the document cannot drift from what the service does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from orchestrator.http.errors import Handler
from orchestrator.http.schemas import ErrorBody, ValidationErrorBody

Access = Literal["public", "read", "write"]
"""public: no token; read: the token when one is set; write: the token, always."""

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """aiohttp path; `{name}` or `{name:regex}` parameters."""
    handler: Handler
    summary: str
    access: Access
    tag: str = "api"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    error_answers: tuple[tuple[int, type[BaseModel]], ...] = ()
    """Error statuses whose body is not ErrorBody (e.g. /healthz's 503 is a Health)."""
    media_type: str = "application/json"
    """Of the success answer, when it is not JSON (metrics text, the dashboard page)."""
    description: str = ""


_REASONS = {
    400: "Bad request: the body could not be read as sent, or is not what this takes",
    401: "Missing or wrong bearer token",
    403: "Writes are disabled: LKD_API_TOKEN is not set",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Invalid body or query: every invalid field is named",
    503: "A dependency (Redis, a worker) is not available",
}


def _models(routes: list[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    pairs: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in routes:
        for model, mode in (
            (route.body, "validation"),
            (route.query, "validation"),
            (route.answer, "serialization"),
        ):
            if model is not None:
                pairs[(model, mode)] = None  # type: ignore[index]
        for _, model in route.error_answers:
            pairs[(model, "serialization")] = None
    pairs[(ErrorBody, "serialization")] = None
    pairs[(ValidationErrorBody, "serialization")] = None
    return list(pairs)


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _json(ref: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": ref}}


def openapi(routes: list[Route], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI document of `routes`."""
    pairs = _models(routes)
    refs, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = _PARAM.sub(r"{\1}", route.path)
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag],
        }
        if route.description:
            op["description"] = route.description
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(route.path)
        ]
        if route.query is not None:
            target = ref(route.query, "validation")["$ref"].rsplit("/", 1)[-1]
            params += _query_parameters(components[target])
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": _json(ref(route.body, "validation")),
            }
        answers: dict[str, Any] = {}
        success: dict[str, Any] = {"description": "OK" if route.status == 200 else "Accepted"}
        if route.answer is not None:
            success["content"] = _json(ref(route.answer, "serialization"), route.media_type)
        elif route.media_type != "application/json":
            success["content"] = {route.media_type: {"schema": {"type": "string"}}}
        answers[str(route.status)] = success
        errors = set(route.errors)
        if route.body is not None or route.query is not None:
            errors.add(422)
        if route.body is not None:
            errors |= {400, 413}
        if route.tag in ("api", "livekit"):
            errors.add(503)  # Redis unreachable
        if route.access != "public":
            errors.add(401)
            op["security"] = [{"bearerAuth": []}]
        if route.access == "write":
            errors.add(403)
        special = dict(route.error_answers)
        errors |= set(special)
        for status in sorted(errors):
            default = ValidationErrorBody if status == 422 else ErrorBody
            model = special.get(status, default)
            answers[str(status)] = {
                "description": _REASONS.get(status, "Error"),
                "content": _json(ref(model, "serialization")),
            }
        op["responses"] = answers
        paths.setdefault(path, {})[route.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The service's LKD_API_TOKEN",
                }
            },
        },
    }
