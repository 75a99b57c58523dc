"""The generated swagger document: run() parameters without a default are ``required``.

The worker answers 400 for a schema ``run()`` called without one of them
(``server.entry.inputs.schema_arguments``), so the document must not let ``{}`` validate.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import jsonschema
import pytest

from server.entry.inputs import schema_arguments
from server.errors import BadRequest
from server.http import swagger
from server.settings import Settings
from server.workers.protocol import MetaLevel, RunMode, ScriptInfo

SCHEMA = {
    "type": "object",
    "properties": {"data": {"type": "array", "items": {"type": "number"}}, "scale": {"type": "number"}},
    "example": {"data": [1.0], "scale": 1.0},
}


def script(required: list[str], schema: Any = SCHEMA) -> ScriptInfo:
    return ScriptInfo(
        RunMode.SCHEMA,
        False,
        MetaLevel.CONTENT_TYPE,
        ["data", "scale"],
        copy.deepcopy(schema),
        {"type": "number"},
        ["2", "3", "3.1"],
        required,
    )


def service_input(version: str, info: ScriptInfo | None) -> Any:
    doc = swagger.build(version, Settings(), info)
    return doc["definitions"]["ServiceInput"] if version == "2" else doc["components"]["schemas"]["ServiceInput"]


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_parameters_without_defaults_are_required(version: str) -> None:
    schema = service_input(version, script(["data"]))
    assert schema["required"] == ["data"]
    assert schema["properties"] == SCHEMA["properties"]
    with pytest.raises(jsonschema.ValidationError, match="'data' is a required property"):
        jsonschema.validate({}, schema)
    jsonschema.validate({"data": [1.0]}, schema)


def test_the_document_matches_what_the_worker_enforces() -> None:
    def run(data: Any, scale: float = 1.0) -> Any:
        return data

    params = list(inspect.signature(run).parameters.values())
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    schema = service_input("3", script(required))
    for payload in ({}, {"scale": 2.0}, {"data": [1.0]}, {"data": [1.0], "scale": 2.0}):
        try:
            schema_arguments(params, payload)
            accepted = True
        except BadRequest:
            accepted = False
        assert jsonschema.Draft7Validator(schema).is_valid(payload) is accepted, payload


def test_existing_required_names_are_kept_and_the_script_schema_is_not_changed() -> None:
    info = script(["data", "scale"], {**SCHEMA, "required": ["scale", "extra"]})
    assert service_input("2", info)["required"] == ["scale", "extra", "data"]
    assert info.input_schema["required"] == ["scale", "extra"]


def test_no_required_list_without_required_parameters_or_schema() -> None:
    assert "required" not in service_input("3", script([]))
    assert service_input("3", None) == {"type": "object", "example": {}}
    assert "required" not in service_input("3", script(["data"], schema=None))


def test_script_info_carries_required_params_and_reads_old_workers() -> None:
    info = script(["data"])
    assert ScriptInfo.from_dict(info.to_dict()) == info
    old = info.to_dict()
    del old["required_params"]
    assert ScriptInfo.from_dict(old).required_params == []
