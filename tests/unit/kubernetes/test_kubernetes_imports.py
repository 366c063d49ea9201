"""Kubernetes mode adds nothing heavy to what a DAG file imports: the client loads on first use only."""

from __future__ import annotations

import json

CHECK = """
import json, sys
import airflow_mlops.operators.train, airflow_mlops.hooks.kubernetes, airflow_mlops.triggers.kubernetes
heavy = ("kubernetes", "kubernetes_asyncio", "mlflow", "torch", "horovod")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
"""


def start_jobs(jobs) -> None:
    work = jobs.workdir("k8s-import-guard")
    jobs.submit("k8s-import-guard", [jobs.python, "-c", CHECK], env=jobs.airflow_env(work / "airflow-home"))


def test_operator_hook_and_trigger_modules_import_no_kubernetes_client(jobs):
    start_jobs(jobs)
    result = jobs.result("k8s-import-guard").check()
    assert json.loads(result.output.strip().splitlines()[-1]) == []
