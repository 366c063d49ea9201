"""JSON schemas of Kubernetes objects, for validating rendered manifests offline.

* Core objects (Job, Pod template, ConfigMap, Service): built from the model classes of the
  installed ``kubernetes`` Python client (generated from the Kubernetes OpenAPI spec): each model's
  ``openapi_types`` gives the field types and ``attribute_map`` the JSON names; a field is
  required when its setter rejects ``None`` (how the generator encodes ``required``). Unknown
  fields are rejected (``additionalProperties: false``) — the API server would silently drop
  them, which for a manifest is a bug.
* The Kubeflow MPIJob: ``schemas/mpijob-v2beta1.json``, the CRD's openAPIV3Schema (see its
  ``$comment``), made strict the same way; each replica's pod template is checked against the
  core PodTemplateSpec schema, which is what the CRD embeds.
"""

from __future__ import annotations

import inspect
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).with_name("schemas")
_PRIMITIVES = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},  # IntOrString, RawExtension...
}


def _type_schema(type_name: str, defs: dict[str, Any]) -> dict[str, Any]:
    if type_name in _PRIMITIVES:
        return dict(_PRIMITIVES[type_name])
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        return {"type": "array", "items": _type_schema(m.group(1), defs)}
    if m := re.fullmatch(r"dict\[str, (.+)\]", type_name):
        return {"type": "object", "additionalProperties": _type_schema(m.group(1), defs)}
    _model_schema(type_name, defs)
    return {"$ref": f"#/$defs/{type_name}"}


def _required(cls, attr: str) -> bool:
    setter = getattr(cls, attr).fset
    return "must not be `None`" in inspect.getsource(setter)


def _model_schema(name: str, defs: dict[str, Any]) -> None:
    if name in defs:
        return
    from kubernetes import client

    cls = getattr(client, name)
    defs[name] = {}  # placeholder against recursion (JSONSchemaProps...)
    props = {cls.attribute_map[a]: _type_schema(t, defs) for a, t in cls.openapi_types.items()}
    required = sorted(cls.attribute_map[a] for a in cls.openapi_types if _required(cls, a))
    defs[name] = {"type": "object", "properties": props, "additionalProperties": False, "required": required}


@cache
def core_schema(model: str) -> dict[str, Any]:
    """The JSON schema of a core model, e.g. ``V1Job``, ``V1ConfigMap``, ``V1PodTemplateSpec``."""
    defs: dict[str, Any] = {}
    _model_schema(model, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/$defs/{model}",
        "$defs": defs,
    }


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def mpijob_schema() -> dict[str, Any]:
    data = json.loads((SCHEMAS / "mpijob-v2beta1.json").read_text())
    return _strict(data["openAPIV3Schema"])


_MODELS = {"Job": "V1Job", "ConfigMap": "V1ConfigMap", "Service": "V1Service", "Pod": "V1Pod"}


def errors(manifest: dict[str, Any]) -> list[str]:
    """Every schema violation of ``manifest`` as ``path: message`` (empty when valid)."""
    kind = manifest.get("kind")
    checks: list[tuple[str, dict[str, Any], Any]] = []
    if kind == "MPIJob":
        checks.append(("", mpijob_schema(), manifest))
        for role, replica in (manifest.get("spec", {}).get("mpiReplicaSpecs") or {}).items():
            template = replica.get("template", {})
            checks.append(
                (f"spec.mpiReplicaSpecs.{role}.template", core_schema("V1PodTemplateSpec"), template)
            )
    elif kind in _MODELS:
        checks.append(("", core_schema(_MODELS[kind]), manifest))
    else:
        return [f"no schema for kind {kind!r}"]
    return check_errors(checks)


def check_errors(checks: list[tuple[str, dict[str, Any], Any]]) -> list[str]:
    """Every schema error of ``(path prefix, schema, instance)`` checks, as ``path: message``."""
    out = []
    for prefix, schema, instance in checks:
        for err in jsonschema.Draft202012Validator(schema).iter_errors(instance):
            path = ".".join(str(p) for p in [prefix, *err.absolute_path] if p != "")
            out.append(f"{path or '<root>'}: {err.message}")
    return out
