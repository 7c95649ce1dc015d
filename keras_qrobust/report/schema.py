"""The report's JSON schema (versioned), its validation and the warnings printed with every report."""

from __future__ import annotations

__all__ = ["SCHEMA", "SCHEMA_VERSION", "WARNINGS", "validate", "suspect_curves"]

SCHEMA_VERSION = "1.0"

#: docs/limits.md, printed with every report
WARNINGS = (
    "Robust accuracy is accuracy on attacked test inputs, the attack run against the model scored "
    "(white-box) unless the row says transfer or black-box; clean accuracy is the ε = 0 column.",
    "A defense that changes gradients (μ-law mapping, rounding without straight-through gradients) must also "
    "be scored with gradient-free, transfer and BPDA attacks before its gradient-attack numbers are believed.",
    "Accuracy must fall as ε grows; a curve that does not is flagged below as suspect, not reported as a result.",
    "Sub-8-bit results hold for the artifact only when re-measured in its own runtime (kq.export.load).",
)

_NUMBER = {"type": "number"}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "keras_qrobust RobustnessReport",
    "type": "object",
    "required": ["schema_version", "keras_qrobust", "eps", "attacks", "accuracy", "provenance", "warnings",
                 "suspect"],
    "properties": {
        "schema_version": {"type": "string", "enum": [SCHEMA_VERSION]},
        "keras_qrobust": {"type": "string"},
        "eps": {"type": "array", "items": _NUMBER},
        "attacks": {"type": "array", "items": {"type": "string"}},
        "accuracy": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": {"type": "array", "items": _NUMBER}}},
        "provenance": {"type": "object", "required": ["attacks", "eps", "samples", "seed"]},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "suspect": {"type": "array", "items": {"type": "string"}},
        "bits": {"type": "object", "additionalProperties": {"type": "integer"}},
        "critical": {"type": ["object", "null"]},
        "lipschitz": {"type": "object"},
        "transfer": {"type": ["object", "null"]},
        "sections": {"type": "array", "items": {"type": "object", "required": ["title", "markdown"]}},
        "tradeoff": {"type": ["array", "null"], "items": {"type": "object", "required": ["name", "bytes", "robust"]}},
    },
}


def validate(data, schema: dict = SCHEMA, path: str = "$") -> None:
    """Check ``data`` against the subset of JSON Schema used by :data:`SCHEMA` (raise ValueError)."""
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not any(checks[t](data) for t in allowed):
            raise ValueError(f"{path}: expected {types}, got {type(data).__name__}")
    if "enum" in schema and data not in schema["enum"]:
        raise ValueError(f"{path}: {data!r} is not one of {schema['enum']}")
    if isinstance(data, dict):
        for key in schema.get("required", []):
            if key not in data:
                raise ValueError(f"{path}: missing required key {key!r}")
        properties = schema.get("properties", {})
        for key, value in data.items():
            sub = properties.get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                validate(value, sub, f"{path}.{key}")
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(data):
            validate(value, schema["items"], f"{path}[{i}]")


def suspect_curves(accuracy: dict, eps: list) -> list[str]:
    """Curves whose accuracy rises with ε by more than one point."""
    out = []
    for name, rows in accuracy.items():
        for attack, values in rows.items():
            if any(b > a + 0.01 for a, b in zip(values, values[1:])):
                out.append(f"{name} / {attack}: accuracy rises with ε ({', '.join(f'{100 * v:.1f}' for v in values)})")
    return out
