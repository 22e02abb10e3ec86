"""The HTTP API as an OpenAPI 3.1 document, generated from the registry (ListFunctions).

Each function and alias gets its own ``POST /v1/functions/{name}`` with its params as
query parameters, typed from the ``param_specs`` its handler declares (type, range,
default, choices), its input and answer content types, and every error status of
the one table (handlers/errors.py) with the JSON error shapes. The /v2 routes (Open
Inference over HTTP) are described once, their model names the functions and
aliases. Pure: the route that serves it asks the gateway for the functions.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from handlers.errors import TABLE
from protos.dcf.v1 import dcf_pb2

OPENAPI_VERSION = "3.1.0"
NDJSON = "application/x-ndjson"
JSON = "application/json"
BINARY = "application/octet-stream"

Json = dict[str, Any]


def server_version() -> str:
    try:
        return importlib.metadata.version("dcf")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def document(functions: Sequence[dcf_pb2.FunctionInfo], version: str | None = None) -> Json:
    """The OpenAPI document of the HTTP API serving ``functions``."""
    models = [name for fn in functions for name in (fn.name, *fn.aliases)]
    paths: Json = {"/v1/functions": {"get": _list_operation()}}
    taken: set[str] = set()
    for fn in functions:
        for name in (fn.name, *fn.aliases):
            operation = _call_operation(fn, name)
            # Unique, as OpenAPI requires, should two names read alike ("a-b", "a_b").
            base = operation["operationId"]
            suffix = 1
            while operation["operationId"] in taken:
                suffix += 1
                operation["operationId"] = f"{base}_{suffix}"
            taken.add(operation["operationId"])
            paths[f"/v1/functions/{name}"] = {"post": operation}
    paths.update(_v2_paths())
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "tags": ["about"],
            "summary": "This document",
            "responses": {"200": {"description": "The OpenAPI document", "content": {JSON: {}}}},
        }
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dcf",
            "version": version or server_version(),
            "summary": "Call dcf's media functions over HTTP, and as Open Inference models.",
            "description": (
                "POST a function's input as the body of /v1/functions/{name}: the body "
                "goes up and the answer comes down as they flow. The same functions are "
                "Open Inference (KServe v2) models under /v2. A token, when the server "
                "asks for one, goes in `Authorization: Bearer TOKEN`."
            ),
        },
        "tags": [
            {"name": "functions", "description": "dcf's own API: one route per function"},
            {"name": "open-inference", "description": "Open Inference Protocol (KServe v2)"},
            {"name": "about", "description": "This description"},
        ],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": _components(models),
    }


# ---------------------------------------------------------------- /v1


def _list_operation() -> Json:
    return {
        "operationId": "listFunctions",
        "tags": ["functions"],
        "summary": "The functions, their params and limits",
        "responses": {
            "200": {
                "description": "The functions",
                "content": {
                    JSON: {
                        "schema": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/FunctionInfo"},
                        }
                    }
                },
            },
            **_error_responses("Error", (401, 403, 503, 504)),
        },
    }


def _call_operation(fn: dcf_pb2.FunctionInfo, name: str) -> Json:
    alias = name != fn.name
    limit = f"at most {fn.max_input_bytes} bytes" if fn.max_input_bytes else "any size"
    about = [
        fn.description,
        (
            f"The body is the input ({fn.input_content_type or 'any type'}, {limit}), "
            "streamed as it arrives; the answer streams back as it is produced."
        ),
    ]
    if alias:
        about.insert(0, f"`{name}` is another name of `{fn.name}`.")
    elif fn.aliases:
        about.append("Also called as " + ", ".join(f"`{a}`" for a in fn.aliases) + ".")
    output = fn.output_content_type or BINARY
    answer: Json = {"description": f"The answer, {output}", "content": {output: {}}}
    if output == NDJSON:
        answer["description"] = (
            "One JSON line per partial result, each sent as it is done; a failure after "
            'the answer began ends it with one line `{"error": {...}}` (StreamError)'
        )
    answer["headers"] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    return {
        "operationId": "call_" + re.sub(r"\W", "_", name),
        "tags": ["functions"],
        "summary": f"Call {name}" + (f" (alias of {fn.name})" if alias else ""),
        "description": " ".join(about),
        "parameters": [
            *(_query_parameter(spec) for spec in fn.param_specs),
            {"$ref": "#/components/parameters/RequestId"},
            {"$ref": "#/components/parameters/Timeout"},
        ],
        "requestBody": {
            "required": True,
            "description": f"The input: {fn.input_content_type or 'any bytes'}",
            "content": {fn.input_content_type or BINARY: {}},
        },
        "responses": {
            "200": answer,
            **_error_responses("Error", _statuses(405)),
        },
    }


def _query_parameter(spec: dcf_pb2.ParamSpec) -> Json:
    return {
        "name": spec.name,
        "in": "query",
        "required": False,
        "description": spec.description,
        "schema": param_schema(spec),
    }


def param_schema(spec: dcf_pb2.ParamSpec) -> Json:
    """The JSON schema of one param: its type, range, choices and default, where it has them."""
    kind = spec.type if spec.type in ("number", "integer", "boolean", "string") else "string"
    schema: Json = {"type": kind}
    for key, present in (("minimum", "minimum"), ("maximum", "maximum")):
        if spec.HasField(present):
            bound = getattr(spec, present)
            schema[key] = int(bound) if kind == "integer" and float(bound).is_integer() else bound
    if spec.choices:
        schema["enum"] = [_typed(kind, choice) for choice in spec.choices]
    if spec.default:
        schema["default"] = _typed(kind, spec.default)
    return schema


def _typed(kind: str, text: str) -> Any:
    """A param's wire text as a value of its type (the text itself if it does not parse)."""
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            number = float(text)
            return number if math.isfinite(number) else text
    except ValueError:
        return text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


def _statuses(*extra: int) -> list[int]:
    """Every HTTP status of the error table, and ``extra``."""
    return sorted({answer.http for answer in TABLE.values()} | set(extra))


def _error_responses(schema: str, statuses: Iterable[int]) -> Json:
    return {
        str(status): {
            "description": _reasons(status),
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
        for status in statuses
    }


def _reasons(status: int) -> str:
    reasons = [reason for reason, answer in TABLE.items() if answer.http == status]
    if status == 405:
        reasons = ["METHOD_NOT_ALLOWED"]
    shown = ", ".join(reasons)
    return f"{shown}" + ("; try again after Retry-After seconds" if status == 429 else "")


# ---------------------------------------------------------------- /v2


def _v2_paths() -> Json:
    model = "/v2/models/{model_name}"
    versioned = model + "/versions/{model_version}"
    paths: Json = {
        "/v2": {"get": _v2_get("serverMetadata", "Server metadata", "ServerMetadata")},
        "/v2/health/live": {"get": _truth("serverLive", "Whether the server is live")},
        "/v2/health/ready": {"get": _truth("serverReady", "Whether every model has a worker up")},
    }
    name = {"$ref": "#/components/parameters/ModelName"}
    version = {"$ref": "#/components/parameters/ModelVersion"}
    for path, suffix, parameters in ((model, "", [name]), (versioned, "Version", [name, version])):
        paths[path] = {
            "parameters": parameters,
            "get": _v2_get("modelMetadata" + suffix, "Model metadata", "ModelMetadata"),
        }
        paths[path + "/ready"] = {
            "parameters": parameters,
            "get": _truth("modelReady" + suffix, "Whether the model has a worker up"),
        }
        paths[path + "/infer"] = {"parameters": parameters, "post": _infer("infer" + suffix)}
    return paths


def _v2_get(operation: str, summary: str, schema: str) -> Json:
    return {
        "operationId": operation,
        "tags": ["open-inference"],
        "summary": summary,
        "responses": {
            "200": {
                "description": summary,
                "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
            },
            **_error_responses("V2Error", (401, 403, 404, 503, 504)),
        },
    }


def _truth(operation: str, summary: str) -> Json:
    return {
        "operationId": operation,
        "tags": ["open-inference"],
        "summary": summary,
        "responses": {
            "200": {"description": "Yes (no body)"},
            "400": {"description": "No (no body)"},
            **_error_responses("V2Error", (401, 403, 404, 503, 504)),
        },
    }


def _infer(operation: str) -> Json:
    return {
        "operationId": operation,
        "tags": ["open-inference"],
        "summary": "Call the function the model stands for",
        "description": (
            "One BYTES input INPUT and one BYTES output OUTPUT, both of shape [1]: the "
            "whole input and the whole answer (its content type in the answer's "
            "parameters.content_type). The request's and the input's parameters are the "
            "function's params. The body is JSON alone, or (binary tensor data extension) "
            "the JSON object followed by the tensors' bytes, its length in the "
            "Inference-Header-Content-Length header; that header at 0 makes the whole "
            "body the input. Outputs come back as binary data when asked for "
            "(binary_data on an output, binary_data_output on the request), else in "
            "the JSON: text as it is, other bytes in base64 (parameters.content_type: "
            "base64)."
        ),
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "The length of the JSON object before the binary tensor data",
                "schema": {"type": "integer", "minimum": 0},
            },
            {"$ref": "#/components/parameters/RequestId"},
            {"$ref": "#/components/parameters/Timeout"},
        ],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                BINARY: {},
            },
        },
        "responses": {
            "200": {
                "description": "The answer: JSON, or JSON then binary tensor data",
                "headers": {
                    "Inference-Header-Content-Length": {
                        "description": "The JSON's length, when binary data follows it",
                        "schema": {"type": "integer"},
                    },
                    "X-Request-Id": {"$ref": "#/components/headers/RequestId"},
                },
                "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                    BINARY: {},
                },
            },
            **_error_responses("V2Error", _statuses()),
        },
    }


# ---------------------------------------------------------------- components


def _components(models: list[str]) -> Json:
    parameter_value = {"type": ["string", "number", "integer", "boolean"]}
    parameters = {"type": "object", "additionalProperties": parameter_value}
    tensor: Json = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    reasons = ", ".join(TABLE)
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "parameters": {
            "RequestId": {
                "name": "X-Request-Id",
                "in": "header",
                "required": False,
                "description": "The call's id in the server's logs (one is made if absent)",
                "schema": {"type": "string", "maxLength": 64},
            },
            "Timeout": {
                "name": "X-Dcf-Timeout",
                "in": "header",
                "required": False,
                "description": "The call's deadline in seconds (more than 3600 is taken as 3600)",
                "schema": {"type": "number", "exclusiveMinimum": 0},
            },
            "ModelName": {
                "name": "model_name",
                "in": "path",
                "required": True,
                "description": "A function or one of its aliases",
                "schema": {"type": "string", **({"enum": models} if models else {})},
            },
            "ModelVersion": {
                "name": "model_version",
                "in": "path",
                "required": True,
                "description": "Every model has the one version 1",
                "schema": {"type": "string", "enum": ["1"]},
            },
        },
        "headers": {
            "RequestId": {
                "description": "The call's id, the caller's own or a new one",
                "schema": {"type": "string"},
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["code", "reason", "message"],
                "properties": {
                    "code": {"type": "string", "description": "The gRPC status's name"},
                    "reason": {
                        "type": "string",
                        "description": f"What went wrong, to tell errors apart by: {reasons} "
                        "(and the front's own: METHOD_NOT_ALLOWED, MISDIRECTED_REQUEST)",
                    },
                    "message": {"type": "string", "description": "One line for people"},
                },
            },
            "StreamError": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"$ref": "#/components/schemas/Error"}},
                "description": "The last line of an NDJSON answer that failed after it began",
            },
            "V2Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string", "description": "One line for people"},
                    "reason": {"type": "string", "description": f"One of {reasons}"},
                },
            },
            "ParamSpec": {
                "type": "object",
                "required": ["name", "type", "description"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"enum": ["number", "integer", "boolean", "string"]},
                    "description": {"type": "string"},
                    "default": {"type": "string"},
                    "minimum": {"type": "number"},
                    "maximum": {"type": "number"},
                    "choices": {"type": "array", "items": {"type": "string"}},
                },
            },
            "FunctionInfo": {
                "type": "object",
                "required": ["name", "description", "params", "param_specs"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "input_content_type": {"type": "string"},
                    "output_content_type": {"type": "string"},
                    "aliases": {"type": "array", "items": {"type": "string"}},
                    "params": {"type": "object", "additionalProperties": {"type": "string"}},
                    "param_specs": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ParamSpec"},
                    },
                    "max_input_bytes": {"type": "integer", "description": "0: no limit"},
                },
            },
            "ServerMetadata": {
                "type": "object",
                "required": ["name", "version", "extensions"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "extensions": {"type": "array", "items": {"type": "string"}},
                },
            },
            "ModelMetadata": {
                "type": "object",
                "required": ["name", "platform", "inputs", "outputs"],
                "properties": {
                    "name": {"type": "string"},
                    "versions": {"type": "array", "items": {"type": "string"}},
                    "platform": {"type": "string"},
                    "inputs": {"type": "array", "items": tensor},
                    "outputs": {"type": "array", "items": tensor},
                },
            },
            "Parameters": parameters,
            "InferRequest": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"$ref": "#/components/schemas/Parameters"},
                    "inputs": {
                        "type": "array",
                        "items": {
                            **tensor,
                            "properties": {
                                **tensor["properties"],
                                "parameters": {"$ref": "#/components/schemas/Parameters"},
                                "data": {
                                    "type": "array",
                                    "description": "BYTES elements as strings (UTF-8 "
                                    "text, or base64 when parameters.content_type is base64)",
                                },
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "parameters": {"$ref": "#/components/schemas/Parameters"},
                            },
                        },
                    },
                },
            },
            "InferResponse": {
                "type": "object",
                "required": ["model_name", "outputs"],
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "parameters": {"$ref": "#/components/schemas/Parameters"},
                    "outputs": {
                        "type": "array",
                        "items": {
                            **tensor,
                            "properties": {
                                **tensor["properties"],
                                "parameters": {"$ref": "#/components/schemas/Parameters"},
                                "data": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    }
