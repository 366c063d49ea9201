"""Run Airflow's real provider discovery in a fresh interpreter and dump what it found as JSON.

Usage: ``python provider_discovery.py RESULT.json`` with ``AIRFLOW_HOME`` set to a fresh folder.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
import warnings

PACKAGE = "airflow-provider-mlops"
CONN_TYPES = ("mlflow", "feast", "seldon")
HEAVY = ("mlflow", "feast", "great_expectations", "torch", "horovod", "seldon_core", "alibi_detect")


def _import_all(info: dict) -> dict:
    """Import every module and extra-link class the provider declares."""
    from airflow.sdk import BaseOperatorLink

    modules = [
        m
        for section in ("operators", "hooks")
        for entry in info.get(section, [])
        for m in entry["python-modules"]
    ]
    imported: dict[str, str | None] = {}
    for module in modules:
        try:
            importlib.import_module(module)
            imported[module] = None
        except Exception:
            imported[module] = traceback.format_exc()
    links: dict[str, dict] = {}
    for path in info.get("extra-links", []):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
            links[path] = {"error": None, "is_link": issubclass(cls, BaseOperatorLink), "name": cls.name}
        except Exception:
            links[path] = {"error": traceback.format_exc()}
    hook_classes: dict[str, dict] = {}
    for conn in info.get("connection-types", []):
        module, _, name = conn["hook-class-name"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        hook_classes[conn["connection-type"]] = {
            "conn_type": getattr(cls, "conn_type", None),
            "conn_name_attr": getattr(cls, "conn_name_attr", None),
            "hook_name": getattr(cls, "hook_name", None),
        }
    return {"modules": imported, "links": links, "hook_classes": hook_classes}


def main(result_path: str) -> None:
    warnings.simplefilter("ignore")  # ProvidersManager.hooks is deprecated in favour of the task-sdk one
    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    provider = pm.providers.get(PACKAGE)
    hooks = {}
    for conn_type in CONN_TYPES:
        hook = pm.hooks.get(conn_type)
        hooks[conn_type] = (
            None
            if hook is None
            else {
                "hook_class_name": hook.hook_class_name,
                "connection_id_attribute_name": hook.connection_id_attribute_name,
                "package_name": hook.package_name,
                "hook_name": hook.hook_name,
                "connection_type": hook.connection_type,
            }
        )
    widgets = {
        key: {
            "hook_class_name": w.hook_class_name,
            "package_name": w.package_name,
            "field_name": w.field_name,
            "field": w.field,
        }
        for key, w in pm.connection_form_widgets.items()
        if key.split("__")[1:2] and key.split("__")[1] in CONN_TYPES
    }
    behaviours = {conn_type: pm.field_behaviours.get(conn_type) for conn_type in CONN_TYPES}
    modules_before_imports = sorted(m for m in HEAVY if m in sys.modules)
    result = {
        "provider": None if provider is None else {"version": provider.version, "data": provider.data},
        "hooks": hooks,
        "widgets": widgets,
        "field_behaviours": behaviours,
        "extra_links": pm.extra_links_class_names,
        "provider_configs": dict(pm.provider_configs).get(PACKAGE),
        "conf_mlops": {key: conf.get("mlops", key) for key in ("data_dir", "runtimes_dir")},
        "heavy_after_discovery": modules_before_imports,
    }
    if provider is not None:
        result["imports"] = _import_all(provider.data)
    result["heavy_after_imports"] = sorted(m for m in HEAVY if m in sys.modules)
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
