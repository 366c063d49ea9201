"""The provider's Kubernetes mode.

* manifests, pure functions on plain dicts (no API calls, no ``kubernetes`` import): what every
  job shares (:mod:`~airflow_mlops.kubernetes.jobs`), a Horovod training job
  (:mod:`~airflow_mlops.kubernetes.training`), a drift check (:mod:`~airflow_mlops.kubernetes.drift`),
  a ``SeldonDeployment`` and reading its status (:mod:`~airflow_mlops.kubernetes.seldon`);
* the rollout of a ``SeldonDeployment`` (:mod:`~airflow_mlops.kubernetes.seldon_rollout`), which
  the Seldon operators and sensor drive through the hooks (the client is imported on first use).
"""
