"""Swagger / OpenAPI documents for ``GET /swagger.json?version=2|3|3.1``.

Generated from the inference-schema decorators of ``run()`` when present (the
worker reports them), a minimal document otherwise; a user's own
``swagger.json`` / ``swagger2.json``, ``swagger3.json`` or ``swagger3.1.json`` in the
app root wins, as with the reference server.

The input schema lists as ``required`` every ``run()`` parameter without a default
(``ScriptInfo.required_params``): the worker answers 400 when one is missing
(:func:`server.entry.inputs.schema_arguments`), so ``{}`` must not validate either.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

from server.errors import NotFound
from server.settings import Settings
from server.workers.protocol import ScriptInfo

logger = logging.getLogger("scorehost.swagger")

VERSIONS = {"2": "2", "2.0": "2", "3": "3", "3.0": "3", "3.1": "3.1"}
_USER_FILES = {"2": ("swagger.json", "swagger2.json"), "3": ("swagger3.json",), "3.1": ("swagger3.1.json",)}
_EMPTY = {"type": "object", "example": {}}


def _operations(prefix: str, ref: str) -> dict[str, Any]:
    body_ref = {"$ref": f"{ref}ServiceInput"}
    out_ref = {"$ref": f"{ref}ServiceOutput"}
    return {
        f"{prefix}/": {
            "get": {
                "operationId": "ServiceHealthCheck",
                "description": "Simple health check endpoint to ensure the service is up at any given point.",
                "responses": {
                    "200": {
                        "description": "If service is up and running, this "
                        "response will be returned with the content 'Healthy'"
                    }
                },
            }
        },
        f"{prefix}/score": {
            "post": {
                "operationId": "RunMLService",
                "description": "Run web service's model and get the prediction output",
                "_body": body_ref,
                "_out": out_ref,
            }
        },
    }


def build(version: str, settings: Settings, script: ScriptInfo | None) -> dict[str, Any]:
    """The document for one version alias; raises :class:`NotFound` for unknown versions."""
    canonical = VERSIONS.get(version)
    versions = script.swagger_versions if script is not None else list(VERSIONS)
    supported = sorted({VERSIONS[v] for v in versions if v in VERSIONS} or {"2", "3", "3.1"})
    if canonical is None:
        raise NotFound(f"Swagger version [{version}] is not valid. Supported versions: [{', '.join(supported)}].")
    if canonical not in supported:
        raise NotFound(
            f"Swagger version [{version}] is not supported for the scoring script. "
            f"Supported swagger versions: [{', '.join(supported)}]."
        )
    user = _user_document(canonical, settings)
    if user is not None:
        return user
    inp = _input_schema(script)
    out = (script.output_schema if script else None) or _EMPTY
    prefix = f"/{settings.service_path_prefix}" if settings.service_path_prefix else ""
    info = {
        "title": settings.service_name,
        "description": f"API specification for {settings.service_name}",
        "version": settings.service_version,
    }
    if canonical == "2":
        doc: dict[str, Any] = {
            "swagger": "2.0",
            "info": info,
            "schemes": ["http"],
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "paths": {},
            "definitions": {
                "ServiceInput": copy.deepcopy(inp),
                "ServiceOutput": copy.deepcopy(out),
                "ErrorResponse": {"type": "object", "properties": {"message": {"type": "string"}}},
            },
        }
        for path, ops in _operations(prefix, "#/definitions/").items():
            for op in ops.values():
                body = op.pop("_body", None)
                result = op.pop("_out", None)
                if body is not None:
                    op["parameters"] = [{"name": "serviceInputPayload", "in": "body", "required": True, "schema": body}]
                    op["responses"] = {
                        "200": {
                            "description": "The service processed the input correctly "
                            "and provided a result prediction, if applicable.",
                            "schema": result,
                        },
                        "default": {
                            "description": "The service failed to execute due to an error.",
                            "schema": {"$ref": "#/definitions/ErrorResponse"},
                        },
                    }
            doc["paths"][path] = ops
        return doc
    doc = {
        "openapi": "3.1.0" if canonical == "3.1" else "3.0.1",
        "info": info,
        "paths": {},
        "components": {
            "schemas": {
                "ServiceInput": copy.deepcopy(inp),
                "ServiceOutput": copy.deepcopy(out),
                "ErrorResponse": {"type": "object", "properties": {"message": {"type": "string"}}},
            }
        },
    }
    for path, ops in _operations(prefix, "#/components/schemas/").items():
        for op in ops.values():
            body = op.pop("_body", None)
            result = op.pop("_out", None)
            if body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
                op["responses"] = {
                    "200": {"description": "Prediction", "content": {"application/json": {"schema": result}}},
                    "default": {
                        "description": "Error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    },
                }
        doc["paths"][path] = ops
    return doc


def _input_schema(script: ScriptInfo | None) -> Any:
    """The ServiceInput schema: the decorators', with the parameters run() cannot do without as ``required``."""
    schema = script.input_schema if script else None
    if not schema:
        return _EMPTY
    if not isinstance(schema, dict) or not script or not script.required_params:
        return schema
    required = schema.get("required")
    names = list(required) if isinstance(required, list) else []
    names += [name for name in script.required_params if name not in names]
    return {**schema, "required": names}


def _user_document(canonical: str, settings: Settings) -> dict[str, Any] | None:
    root = settings.resolved_app_root(os.getcwd())
    for name in _USER_FILES[canonical]:
        path = os.path.join(root, name)
        try:
            with open(path, encoding="utf-8") as f:
                doc: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable swagger file %s: %s", path, exc)
            continue
        logger.info("Serving the user's swagger file %s for version %s", path, canonical)
        return doc
    return None
