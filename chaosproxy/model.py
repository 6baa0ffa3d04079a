"""JSON shapes of the control API: decoding request bodies the way Toxiproxy's Go decoder does."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from chaosproxy.errors import BAD_REQUEST_BODY, INVALID_STREAM, INVALID_TOXIC_TYPE

STREAMS = ("upstream", "downstream")

# Attribute names per toxic type, all integers as in Toxiproxy's toxics/*.go; a missing one is 0.
TOXIC_ATTRIBUTES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
})

# The Go type names Toxiproxy's decoding errors mention.
_GO_TOXIC_TYPES = {
    "latency": "LatencyToxic", "bandwidth": "BandwidthToxic", "slow_close": "SlowCloseToxic",
    "timeout": "TimeoutToxic", "reset_peer": "ResetToxic", "slicer": "SlicerToxic",
    "limit_data": "LimitDataToxic",
}


@dataclass(frozen=True)
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float = 1.0
    attributes: Mapping[str, int] = field(default_factory=dict)

    def attribute(self, key: str) -> int:
        return int(self.attributes.get(key, 0))

    def as_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }


def _go_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {json.dumps(value)}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: object, where: str, go_type: str) -> Exception:
    return BAD_REQUEST_BODY.joined(f"json: cannot unmarshal {_go_kind(value)} into {where} of type {go_type}")


def decode_body(body: bytes, go_type: str, *, want: type = dict) -> Any:
    """Parse a request body; errors read like Go's ``encoding/json`` ones behind "bad request body: "."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        raise BAD_REQUEST_BODY.joined("EOF")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BAD_REQUEST_BODY.joined(f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(value, want):
        raise _type_error(value, "Go value", go_type)
    return value


def string_field(obj: Mapping[str, Any], key: str, struct: str) -> str | None:
    """A string field, None when absent or null (Go keeps the default then)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error(value, f"Go struct field {struct}.{key}", "string")
    return value


def bool_field(obj: Mapping[str, Any], key: str, struct: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _type_error(value, f"Go struct field {struct}.{key}", "bool")
    return value


def _toxicity_field(obj: Mapping[str, Any]) -> float | None:
    value = obj.get("toxicity")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(value, "Go struct field ToxicWrapper.toxicity", "float32")
    return float(value)


def _attributes(toxic_type: str, raw: object, base: Mapping[str, int]) -> dict[str, int]:
    """The type's attributes, starting from ``base``; unknown keys are ignored as Go does."""
    attributes = {key: int(base.get(key, 0)) for key in TOXIC_ATTRIBUTES[toxic_type]}
    if raw is None:
        return attributes
    go_type = _GO_TOXIC_TYPES[toxic_type]
    if not isinstance(raw, dict):
        raise _type_error(raw, "Go value", f"toxics.{go_type}")
    for key in attributes:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, f"Go struct field {go_type}.attributes.{key}", "int64")
        attributes[key] = value
    return attributes


def parse_new_toxic(body: bytes) -> Toxic:
    """A toxic from a create request, in the order Toxiproxy's ``AddToxicJson`` checks things."""
    obj = decode_body(body, "toxics.ToxicWrapper")
    name = string_field(obj, "name", "ToxicWrapper") or ""
    toxic_type = string_field(obj, "type", "ToxicWrapper") or ""
    stream = string_field(obj, "stream", "ToxicWrapper")
    toxicity = _toxicity_field(obj)
    stream = "downstream" if stream is None else stream.lower()
    if stream not in STREAMS:
        raise INVALID_STREAM
    if not name:
        name = f"{toxic_type}_{stream}"
    if toxic_type not in TOXIC_ATTRIBUTES:
        raise INVALID_TOXIC_TYPE
    attributes = _attributes(toxic_type, obj.get("attributes"), {})
    return Toxic(name, toxic_type, stream, 1.0 if toxicity is None else toxicity, attributes)


def parse_toxic_update(existing: Toxic, body: bytes) -> Toxic:
    """Only attributes and toxicity change; attributes left out keep their values (Toxiproxy's merge)."""
    obj = decode_body(body, "struct { Attributes interface {}; Toxicity float32 }")
    toxicity = _toxicity_field(obj)
    attributes = _attributes(existing.type, obj.get("attributes"), existing.attributes)
    return replace(
        existing,
        toxicity=existing.toxicity if toxicity is None else toxicity,
        attributes=attributes,
    )
