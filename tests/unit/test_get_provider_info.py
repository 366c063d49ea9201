"""Provider metadata (``airflow_mlops.get_provider_info``) and Airflow's real discovery of it.

Discovery runs in fresh interpreters with their own ``AIRFLOW_HOME`` (see ``_jobs/``), the
way the scheduler, API server and CLI discover providers: through the entry point.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import json
from pathlib import Path

import jsonschema
import pytest
from airflow_mlops.get_provider_info import get_provider_info

DIST = "airflow-provider-mlops"
#: the contract of the product brief: connection type -> hook class
EXPECTED_HOOKS = {
    "mlflow": "airflow_mlops.hooks.mlflow.MlflowHook",
    "feast": "airflow_mlops.hooks.feast.FeastHook",
    "seldon": "airflow_mlops.hooks.seldon.SeldonHook",
}
EXPECTED_LINKS = {
    "airflow_mlops.links.mlflow.MlflowRunLink",
    "airflow_mlops.links.mlflow.MlflowModelVersionLink",
    "airflow_mlops.links.mlflow.MlflowParentRunLink",
    "airflow_mlops.links.seldon.SeldonEndpointLink",
    "airflow_mlops.links.great_expectations.DataDocsLink",
    "airflow_mlops.links.drift.DriftReportLink",
}
HEAVY = ("mlflow", "feast", "great_expectations", "torch", "horovod", "seldon_core", "alibi_detect")


def start_jobs(jobs) -> None:
    work = jobs.workdir("provider-discovery")
    jobs.submit(
        "provider-discovery",
        [jobs.python, jobs.script("provider_discovery"), work / "result.json"],
        env=jobs.airflow_env(work / "airflow-home"),
    )
    work = jobs.workdir("providers-list")
    jobs.submit(
        "providers-list",
        [Path(jobs.python).parent / "airflow", "providers", "list", "--output", "json"],
        env=jobs.airflow_env(work / "airflow-home", COLUMNS="400"),
    )


@pytest.fixture(scope="module")
def discovery(jobs) -> dict:
    start_jobs(jobs)
    result = jobs.result("provider-discovery").check()
    data = json.loads((jobs.workdir("provider-discovery") / "result.json").read_text())
    data["_output"] = result.output
    return data


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((importlib.resources.files("airflow") / "provider_info.schema.json").read_text())


def _schema_errors(schema: dict, instance: dict) -> list[str]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator_cls(schema).iter_errors(instance)
    ]


# --- the metadata itself ---------------------------------------------------------------


def test_provider_info_validates_against_the_installed_airflow_schema(schema):
    assert _schema_errors(schema, get_provider_info()) == []


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(
            lambda info: info["connection-types"][0].pop("hook-class-name"), id="conn-type-without-hook"
        ),
        pytest.param(lambda info: info.__setitem__("extra-links", "not-a-list"), id="extra-links-not-a-list"),
        pytest.param(lambda info: info.pop("description"), id="no-description"),
    ],
)
def test_schema_check_is_not_vacuous(schema, breakage):
    """The same validation rejects broken variants of our metadata (so the test above can fail)."""
    info = copy.deepcopy(get_provider_info())
    breakage(info)
    assert _schema_errors(schema, info)


def test_entry_point_points_at_get_provider_info_of_the_installed_distribution():
    eps = [
        ep
        for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.metadata["Name"] == DIST
    ]
    assert len(eps) == 1, eps
    info = eps[0].load()()
    assert info["package-name"] == DIST
    assert info["versions"][0] == importlib.metadata.version(DIST)


# --- Airflow's discovery, in a fresh interpreter ---------------------------------------


def test_provider_is_discovered(discovery):
    assert discovery["provider"] is not None, "ProvidersManager did not list airflow-provider-mlops"
    assert discovery["provider"]["version"] == importlib.metadata.version(DIST)
    assert discovery["provider"]["data"]["package-name"] == DIST


@pytest.mark.parametrize("conn_type", sorted(EXPECTED_HOOKS))
def test_connection_type_is_registered_to_its_hook(discovery, conn_type):
    hook = discovery["hooks"][conn_type]
    assert hook is not None, f"no hook registered for connection type {conn_type!r}"
    assert hook["hook_class_name"] == EXPECTED_HOOKS[conn_type]
    assert hook["package_name"] == DIST
    assert hook["connection_type"] == conn_type
    # the class agrees with the metadata (Airflow warns and drops the hook when they differ)
    cls = discovery["imports"]["hook_classes"][conn_type]
    assert cls["conn_type"] == conn_type
    assert hook["connection_id_attribute_name"] == cls["conn_name_attr"] == f"{conn_type}_conn_id"


@pytest.mark.parametrize(
    "key",
    [
        "extra__mlflow__experiment",
        "extra__mlflow__registry_uri",
        "extra__feast__repo_path",
        "extra__feast__project",
        "extra__feast__online_store",
        "extra__feast__redis_connection_string",
        "extra__seldon__mode",
        "extra__seldon__namespace",
        "extra__seldon__kubernetes_conn_id",
    ],
)
def test_connection_form_widget_exists(discovery, key):
    conn_type = key.split("__")[1]
    widget = discovery["widgets"].get(key)
    assert widget is not None, f"{key} missing; widgets found: {sorted(discovery['widgets'])}"
    assert widget["hook_class_name"] == EXPECTED_HOOKS[conn_type]
    assert widget["package_name"] == DIST


def test_every_declared_conn_field_becomes_a_labelled_widget(discovery):
    declared = {
        f"extra__{conn['connection-type']}__{name}": spec
        for conn in get_provider_info()["connection-types"]
        for name, spec in conn["conn-fields"].items()
    }
    assert set(discovery["widgets"]) == set(declared)
    for key, spec in declared.items():
        assert discovery["widgets"][key]["field"]["schema"]["title"] == spec["label"], key


def test_field_behaviours_are_registered(discovery):
    for conn in get_provider_info()["connection-types"]:
        expected = {k.replace("-", "_"): v for k, v in conn["ui-field-behaviour"].items()}
        assert discovery["field_behaviours"][conn["connection-type"]] == expected
    # and they say something: MLflow's host is the tracking URI, Feast needs no host at all
    assert discovery["field_behaviours"]["mlflow"]["relabeling"]["host"] == "Tracking URI"
    assert "host" in discovery["field_behaviours"]["feast"]["hidden_fields"]


def test_every_declared_module_and_extra_link_imports(discovery):
    info = discovery["provider"]["data"]
    declared = [m for section in ("operators", "hooks") for e in info[section] for m in e["python-modules"]]
    assert declared, "the provider declares no operator or hook modules"
    failures = {m: err for m, err in discovery["imports"]["modules"].items() if err}
    assert failures == {}
    assert set(discovery["imports"]["modules"]) == set(declared)
    links = discovery["imports"]["links"]
    assert set(links) == EXPECTED_LINKS
    for path, link in links.items():
        assert link["error"] is None, link["error"]
        assert link["is_link"], f"{path} is not a BaseOperatorLink"
        assert link["name"], f"{path} has no name"
    assert EXPECTED_LINKS <= set(discovery["extra_links"])


def test_discovery_and_module_imports_load_no_heavy_library(discovery):
    assert discovery["heavy_after_discovery"] == []
    assert discovery["heavy_after_imports"] == [], (
        "an operator or hook module imports a heavy library at top level"
    )


def test_provider_config_section_is_registered(discovery):
    assert set(discovery["provider_configs"]["mlops"]["options"]) >= {"data_dir", "runtimes_dir"}
    # conf.get would raise for an unknown section/option: the defaults are served
    assert discovery["conf_mlops"] == {"data_dir": "", "runtimes_dir": ""}


def test_discovery_logs_no_warning_about_the_provider(discovery):
    suspicious = [
        line
        for line in discovery["_output"].splitlines()
        if ("airflow_mlops" in line or DIST in line) and any(w in line.lower() for w in ("warn", "error"))
    ]
    assert suspicious == []


# --- the CLI ---------------------------------------------------------------------------


def test_airflow_providers_list_shows_the_provider(jobs):
    start_jobs(jobs)
    result = jobs.result("providers-list").check()
    start = result.output.index("[{")
    providers, _ = json.JSONDecoder().raw_decode(result.output[start:])
    ours = [p for p in providers if p["package_name"] == DIST]
    assert len(ours) == 1, [p["package_name"] for p in providers]
    assert ours[0]["version"] == importlib.metadata.version(DIST)
    assert ours[0]["description"].startswith("The ML lifecycle")
