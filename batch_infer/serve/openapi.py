"""The OpenAPI document of the served model: its features, outputs, name and version.

FastAPI describes the routes generically; ``describe_model`` specialises the request and
response bodies to the one model this server serves, so ``/docs`` is a form with one field per
feature and generated clients (and Schemathesis) send what the server accepts:

- ``Features``: one row, each feature a required property of the JSON type the model takes
  (numbers; categories as the enum of the known ones when the model refuses others; text);
- ``/predict``: ``{"features": Features}`` or ``Features`` itself; ``/batch_predict``:
  ``{"instances": [Features, ...]}``;
- the V2 infer body: one input per feature (``content_type`` "pd"), in the model's order, then
  any inputs that are not features (ignored); the schema shows one row (``shape [1]``), the
  description says how to send N;
- ``{name}`` and ``{version}``: the model's name and version as their only values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..model.contract import FeatureSpec
from .codecs import input_datatype
from .dataplane import DataPlane

REF = "#/components/schemas/{}"
JSON = "application/json"


def describe_model(document: dict[str, Any], dataplane: DataPlane) -> dict[str, Any]:
    """``document`` (FastAPI's) with the bodies and path parameters of this model."""
    contract = dataplane.model.contract
    example = example_row(contract.features)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Features"] = {
        "title": "Features",
        "description": f"One row for model {dataplane.name!r}: every feature, by name.",
        "type": "object",
        "properties": {spec.name: value_schema(spec) for spec in contract.features},
        "required": contract.names,
        "example": example,
    }
    schemas["PredictRequest"] = {
        "title": "PredictRequest",
        "type": "object",
        "properties": {"features": {"$ref": REF.format("Features")}},
        "required": ["features"],
        "example": {"features": example},
    }
    schemas["BatchPredictRequest"] = {
        "title": "BatchPredictRequest",
        "type": "object",
        "properties": {
            "instances": {"type": "array", "items": {"$ref": REF.format("Features")}, "minItems": 1}
        },
        "required": ["instances"],
        "example": {"instances": [example]},
    }
    _simple_responses(schemas, dataplane)
    schemas["InferenceRequest"] = _inference_request(dataplane, example)
    _set_body(
        document,
        "/predict",
        {
            "anyOf": [{"$ref": REF.format("PredictRequest")}, {"$ref": REF.format("Features")}],
            "description": 'The row as {"features": {...}} (Flask seeds) or flat (FastAPI seeds).',
        },
        {"features": example},
    )
    _set_body(
        document,
        "/batch_predict",
        {"$ref": REF.format("BatchPredictRequest")},
        {"instances": [example]},
    )
    infer_example = schemas["InferenceRequest"]["example"]
    for path in document.get("paths", {}):
        if path.endswith("/infer"):
            _set_body(document, path, {"$ref": REF.format("InferenceRequest")}, infer_example)
    _pin_path_parameters(document, dataplane)
    return document


def value_schema(spec: FeatureSpec) -> dict[str, Any]:
    """The JSON schema of one feature's value."""
    if spec.kind == "numeric":
        schema: dict[str, Any] = {"type": "number"}
    elif spec.kind == "categorical" and spec.categories and spec.unknown in (None, "error"):
        schema = {"enum": [_plain(c) for c in spec.categories]}
    elif spec.kind == "categorical" and input_datatype(spec) in ("INT64", "FP64"):
        schema = {"type": "integer" if input_datatype(spec) == "INT64" else "number"}
    elif spec.kind == "any":
        schema = {}
    else:
        schema = {"type": "string"}
    if spec.nullable is not False and spec.kind != "any":  # missing values: the model's business
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        else:
            schema["type"] = [schema["type"], "null"]
    schema["description"] = f"{spec.name}: {spec.describe()}"
    return schema


def example_row(features: list[FeatureSpec]) -> dict[str, Any]:
    """A row the model takes: zeros, the first known category, a word of text."""
    row: dict[str, Any] = {}
    for spec in features:
        if spec.categories:
            row[spec.name] = _plain(spec.categories[0])
        elif spec.kind in ("text", "categorical"):
            row[spec.name] = "text"
        else:
            row[spec.name] = 0.0
    return row


def _inference_request(dataplane: DataPlane, example: dict[str, Any]) -> dict[str, Any]:
    contract = dataplane.model.contract
    names = contract.names
    tensors = []
    for spec in contract.features:
        datatype = input_datatype(spec)
        tensors.append(
            {
                "type": "object",
                "description": f"Feature {spec.name!r} ({spec.describe()}): shape [N] (or "
                f"[N, 1]) and N values; shown for one row.",
                "properties": {
                    "name": {"const": spec.name},
                    "datatype": {"const": datatype},
                    "shape": {
                        "type": "array",
                        "items": {"const": 1},
                        "minItems": 1,
                        "maxItems": 2,
                    },
                    "data": {
                        "type": "array",
                        "items": _without_description(value_schema(spec)),
                        "minItems": 1,
                        "maxItems": 1,
                    },
                    "parameters": {"type": ["object", "null"]},
                },
                "required": ["name", "datatype", "shape", "data"],
            }
        )
    other_input = {
        "type": "object",
        "description": "An input that is not a feature: ignored, as `run` passes such columns by.",
        "properties": {
            "name": {"type": "string", "not": {"enum": names}},
            "datatype": {"type": "string"},
            "shape": {"type": "array"},
            "data": {"type": "array"},
            "parameters": {"type": ["object", "null"]},
        },
        "required": ["name", "datatype", "shape", "data"],
    }
    outputs = dataplane.output_names
    return {
        "title": "InferenceRequest",
        "description": (
            f"Open Inference Protocol request for model {dataplane.name!r}: one input per "
            f"feature ({', '.join(names)}), each of shape [N] with N values (parameters."
            'content_type "pd"). Also accepted: one [N, '
            f"{len(names)}] numeric tensor with the features in that order, and Triton's binary "
            "tensor extension."
        ),
        "type": "object",
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": {
                "type": ["object", "null"],
                "properties": {"content_type": {"type": ["string", "null"]}},
            },
            "inputs": {
                "type": "array",
                "prefixItems": tensors,
                "items": other_input,
                "minItems": len(tensors),
            },
            "outputs": {
                "type": ["array", "null"],
                "description": f"Default: every output ({', '.join(outputs)}).",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"enum": outputs},
                        "parameters": {"type": ["object", "null"]},
                    },
                    "required": ["name"],
                },
            },
        },
        "required": ["inputs"],
        "example": {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {
                    "name": spec.name,
                    "datatype": input_datatype(spec),
                    "shape": [1],
                    "data": [example[spec.name]],
                }
                for spec in contract.features
            ],
        },
    }


def _simple_responses(schemas: dict[str, Any], dataplane: DataPlane) -> None:
    label_fields = [f for f in dataplane.output_fields if f.name in dataplane.label_names]
    if len(label_fields) == 1:
        label: dict[str, Any] = _arrow_schema(label_fields[0].type)
    else:
        label = {
            "type": "object",
            "properties": {f.name: _arrow_schema(f.type) for f in label_fields},
        }
    width = len(dataplane.probability_names)
    row = {"type": "array", "items": {"type": "number"}, "minItems": width, "maxItems": width}
    classes = dataplane.model.classes if width else None
    described = f" (classes {[_plain(c) for c in classes]})" if classes else ""
    predict: dict[str, Any] = {"prediction": label, "model_version": {"type": "string"}}
    batch: dict[str, Any] = {
        "predictions": {"type": "array", "items": label},
        "model_version": {"type": "string"},
    }
    if width:
        predict["probability"] = {**row, "description": f"The predict_proba row{described}."}
        batch["probabilities"] = {"type": "array", "items": row}
    schemas["PredictResponse"] = {
        "title": "PredictResponse",
        "type": "object",
        "properties": predict,
        "required": list(predict),
    }
    schemas["BatchPredictResponse"] = {
        "title": "BatchPredictResponse",
        "type": "object",
        "properties": batch,
        "required": list(batch),
    }


def _arrow_schema(arrow_type: pa.DataType) -> dict[str, Any]:
    if pa.types.is_boolean(arrow_type):
        return {"type": "boolean"}
    if pa.types.is_integer(arrow_type):
        return {"type": "integer"}
    if pa.types.is_floating(arrow_type):
        return {"type": ["number", "null"]}  # NaN travels as null
    return {"type": ["string", "null"]}


def _set_body(document: dict[str, Any], path: str, schema: dict, example: Any) -> None:
    operation = document.get("paths", {}).get(path, {}).get("post")
    if operation is None:
        return
    operation["requestBody"] = {
        "required": True,
        "content": {JSON: {"schema": schema, "example": example}},
    }


def _pin_path_parameters(document: dict[str, Any], dataplane: DataPlane) -> None:
    values = {"name": dataplane.name, "version": dataplane.version}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                value = values.get(parameter.get("name"))
                if parameter.get("in") == "path" and value is not None:
                    parameter["schema"] = {"type": "string", "enum": [value]}
                    parameter["example"] = value


def _without_description(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "description"}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
