"""
Register trained models in the MLflow registry, move their aliases, and gate promotions.

* :class:`MlflowRegisterModelOperator`: a run's model becomes a version (idempotent by run id),
  with lineage tags; optionally the simple champion rule.
* :class:`MlflowSetAliasOperator`: point an alias at a version (idempotent).
* :class:`ChampionChallengerGateOperator`: challenger against champion on the same held-out
  data, overall and per slice; records the comparison in MLflow; branches to deployment only
  when the champion moved (or to a human approval step, :func:`champion_approval`).

The register operator's rule and the gate score models with :mod:`airflow_mlops.evaluation`
(:func:`~airflow_mlops.evaluation.evaluate_against_champion`); this module orchestrates: which
versions, what is recorded in MLflow, which branch follows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseBranchOperator

from airflow_mlops.assets import attach_outlet_extra

# the scoring lives in its own module (no heavy import there either); these names stay importable
# from here, where they were first defined
from airflow_mlops.evaluation import (  # noqa: F401 - re-exported
    LOWER_IS_BETTER,
    METRICS,
    Comparison,
    Evaluation,
    evaluate_against_champion,
    evaluate_model,
    evaluate_version,
    load_holdout,
    slice_regressions,
)
from airflow_mlops.links.mlflow import MlflowModelVersionLink, MlflowParentRunLink, MlflowRunLink
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from airflow_mlops.hooks.mlflow import MlflowHook
    from airflow_mlops.runtimes.run_tree import TaskRef

#: lineage tags every registered version can carry (``MlflowRegisterModelOperator(lineage=...)``)
LINEAGE_KEYS = ("dataset_version", "feature_views", "validation", "training_dag_run")
#: MLflow caps model-version tag values at 5000 characters
_TAG_VALUE_MAX = 5000
APPROVAL_MODES = ("never", "always", "on_slice_regression")


# -- lineage -------------------------------------------------------------------------------------


def lineage_tags(lineage: Mapping[str, Any], owner: str) -> dict[str, str]:
    """
    ``lineage`` as model-version tags: strings as they are, anything else as sorted JSON.

    Keys are :data:`LINEAGE_KEYS` (a typo would silently lose lineage, so others are refused);
    put free-form tags in ``version_tags``.
    """
    unknown = sorted(set(lineage) - set(LINEAGE_KEYS))
    if unknown:
        raise ValueError(
            f"{owner}: lineage keys {unknown} are not among {list(LINEAGE_KEYS)}; "
            "put other tags in version_tags."
        )
    tags = {}
    for key, value in lineage.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if len(text) > _TAG_VALUE_MAX:  # a whole validation result can be large: keep its start
            text = text[: _TAG_VALUE_MAX - 3] + "..."
        tags[key] = text
    return tags


# -- register ------------------------------------------------------------------------------------


class MlflowRegisterModelOperator(MlopsBaseOperator):
    """
    Register the model of an MLflow run as a new version and point aliases at it.

    Idempotent: a retry finds the version it created from the same run and reuses it (and
    re-applies its tags). The new version gets ``alias`` (``challenger``). With ``evaluation``
    set, the challenger and the current ``champion_alias`` version are scored on the same
    held-out data and the champion alias moves to the challenger only when it is better (the
    first model becomes champion). For per-slice thresholds, recorded comparisons and a
    deployment branch, pass ``champion_alias=None`` (this task then only registers) and follow
    with :class:`ChampionChallengerGateOperator`.

    :param run_id: the MLflow run holding the model (templated).
    :param model_name: registered model name (templated).
    :param artifact_path: the model's name within the run.
    :param alias: alias given to the new version.
    :param champion_alias: alias of the serving model, moved when the challenger wins; None
        leaves it alone (a :class:`ChampionChallengerGateOperator` downstream decides).
    :param evaluation: ``{"data_path", "features", "label", "metric", "higher_is_better"}``
        (templated); None registers without comparing.
    :param lineage: lineage tags (templated): ``dataset_version``, ``feature_views`` (e.g.
        ``{"weather_hourly": "v3"}``), ``validation`` (the Great Expectations result or its
        summary), ``training_dag_run`` (default ``<dag_id>/<run_id>`` of this task).
    :param version_tags: more tags on the version (templated).
    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    template_fields: Sequence[str] = ("run_id", "model_name", "evaluation", "lineage", "version_tags")
    operator_extra_links = (MlflowModelVersionLink(), MlflowParentRunLink())
    ui_color = "#e6f5e9"

    def __init__(
        self,
        *,
        run_id: str,
        model_name: str,
        artifact_path: str = "model",
        alias: str = "challenger",
        champion_alias: str | None = "champion",
        evaluation: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        version_tags: dict[str, Any] | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.model_name = model_name
        self.artifact_path = artifact_path
        self.alias = alias
        self.champion_alias = champion_alias
        self.evaluation = evaluation
        self.lineage = lineage or {}
        self.version_tags = version_tags or {}
        self.mlflow_conn_id = mlflow_conn_id

    def _tags(self, context: Context) -> dict[str, str]:
        ti = context["ti"]
        lineage = {"training_dag_run": f"{ti.dag_id}/{ti.run_id}", **self.lineage}
        return {
            "airflow.dag_id": ti.dag_id,
            "airflow.run_id": ti.run_id,
            **lineage_tags(lineage, self.task_id),
            **{k: str(v) for k, v in self.version_tags.items()},
        }

    def _run_tree(self, hook: MlflowHook, context: Context) -> tuple[str, TaskRef, str, str]:
        """
        ``(experiment id, this task, parent run, training parent run)``: this task's run goes into the
        training run's experiment, nested in this DAG run's parent there; the version links to the
        parent of the DAG run that trained the model (this DAG run's when the run was not made by an
        Airflow task).
        """
        from airflow_mlops.runtimes.run_tree import TaskRef, find_parent

        task = TaskRef.from_ti(context["ti"])
        training = hook.client.get_run(self.run_id)
        experiment_id = training.info.experiment_id
        parent = hook.dag_run_parent(experiment_id, task)
        trained_in = TaskRef.from_tags(training.data.tags)
        training_parent = parent
        if trained_in is not None and trained_in.parent_key != task.parent_key:
            training_parent = find_parent(hook.client, experiment_id, trained_in.parent_key) or parent
        return experiment_id, task, parent, training_parent

    def _record(
        self,
        hook: MlflowHook,
        tree: tuple[str, TaskRef, str, str],
        result: Mapping[str, Any],
    ) -> str:
        """The registration as this task's run in the DAG run's tree; the version points at it."""
        from airflow_mlops.runtimes.run_tree import task_run_name

        experiment_id, task, parent, _ = tree
        decision = result["decision"]
        metrics = {
            k: v for k, v in decision.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        record = hook.log_record_run(
            experiment_id,
            task_run_name(task.task_id, task.run_id, task.map_index),
            metrics=metrics,
            tags={
                "mlops.kind": "registration",
                "model_name": self.model_name,
                "model_version": result["version"],
                "source_run_id": self.run_id,
                "created": str(result["created"]).lower(),
                "promoted": str(result["promoted"]).lower(),
                "champion_version": result["champion_version"] or "",
            },
            record=result,
            artifact_file="registration.json",
            task=task,
            parent_run_id=parent,
        )
        hook.set_version_tags(self.model_name, result["version"], {"airflow.registration_run_id": record})
        return record

    def _register(self, hook: MlflowHook, tags: Mapping[str, str]) -> tuple[str, bool]:
        existing = hook.find_version_for_run(self.model_name, self.run_id)
        if existing is not None:  # a retry, or a cleared task: said in the summary
            hook.set_version_tags(self.model_name, existing.version, tags)  # a retry may bring more lineage
            return str(existing.version), False
        mv = hook.mlflow.register_model(
            f"runs:/{self.run_id}/{self.artifact_path}", self.model_name, tags=tags
        )
        version = self._one_version(hook, str(mv.version))
        hook.wait_until_ready(self.model_name, version)
        return version, True

    def _one_version(self, hook: MlflowHook, version: str) -> str:
        """
        The run's one version: the oldest, the others deleted.

        MLflow's client retries a request that timed out, POSTs included: a server that stalled
        (stopped, overloaded) while creating the version then creates it once per try. All of
        them are this run's and this task's (a retry reuses the version), so the oldest is kept.
        """
        from airflow_mlops.runtimes.run_tree import filter_value

        versions = hook.client.search_model_versions(
            f"name={filter_value(self.model_name)} and run_id='{self.run_id}'"
        )
        numbers = sorted({int(v.version) for v in versions} | {int(version)})
        for extra in numbers[1:]:
            self.log.warning(
                "MLflow created version %s of %s for run %s again (a retried request): deleting it, "
                "version %s is the run's",
                extra,
                self.model_name,
                self.run_id,
                numbers[0],
            )
            hook.client.delete_model_version(self.model_name, str(extra))
        return str(numbers[0])

    def _champion_decision(self, hook: MlflowHook, version: str) -> dict[str, Any]:
        if self.champion_alias is None:
            return {"promote": False, "reason": "the champion is decided downstream"}
        champion = hook.alias_version(self.model_name, self.champion_alias)
        if champion == version:
            return {"promote": False, "reason": f"version {version} is already {self.champion_alias}"}
        if self.evaluation is None:
            return {"promote": champion is None, "reason": "no evaluation configured"}
        evaluation = Evaluation.from_dict(self.evaluation, self.task_id)
        compared = evaluate_against_champion(hook, self.model_name, version, champion, evaluation)
        metric, ours = evaluation.metric, compared["challenger"]["overall"]["value"]
        if champion is None:
            return {"promote": True, "reason": "first model", metric: ours}
        theirs = compared["champion"]["overall"]["value"]
        return {
            "promote": compared["beats_champion"],
            "reason": f"challenger {metric}={ours:.4f} vs champion v{champion} {theirs:.4f}",
            metric: ours,
            f"champion_{metric}": theirs,
            "previous_champion": champion,
        }

    def _summary(self, version: str, created: bool, decision: Mapping[str, Any], champion: str | None) -> str:
        """One line: what was registered, from which run, and where the champion is now."""
        what = (
            f"Registered {self.model_name} version {version} from run {self.run_id}"
            if created
            else f"Reused {self.model_name} version {version}, already registered from run {self.run_id}"
        )
        if self.champion_alias is None:
            return f"{what}; alias {self.alias!r}; the champion is decided downstream."
        if decision["promote"]:
            return f"{what}; alias {self.alias!r}, now {self.champion_alias!r} ({decision['reason']})."
        held = f"v{champion}" if champion else "nobody"
        return f"{what}; alias {self.alias!r}; {self.champion_alias!r} stays {held} ({decision['reason']})."

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.hooks.mlflow import MlflowHook

        hook = MlflowHook(self.mlflow_conn_id)
        with hook.unreachable_as_error(f"{self.task_id} (register {self.model_name!r})"):
            return self._execute(context, hook)

    def _execute(self, context: Context, hook: MlflowHook) -> dict[str, Any]:
        tags = self._tags(context)  # lineage checked before anything is written
        tree = self._run_tree(hook, context)
        # the version links to its training run (also its run_id) and that run's DAG-run parent
        tags.update({"airflow.training_run_id": self.run_id, "airflow.parent_run_id": tree[3]})
        version, created = self._register(hook, tags)
        hook.set_alias(self.model_name, self.alias, version)
        decision = self._champion_decision(hook, version)
        if decision["promote"]:
            hook.set_alias(self.model_name, self.champion_alias, version)
        champion = hook.alias_version(self.model_name, self.champion_alias) if self.champion_alias else None
        # the first line of the task's log: what it did
        self.log.info(self._summary(version, created, decision, champion))
        url = hook.model_version_url(self.model_name, version)
        self.log.info("Model version: %s", url)
        MlflowModelVersionLink.persist(context, url)
        attach_outlet_extra(
            context,
            self.outlets,
            {"name": self.model_name, "version": version, "champion": champion, "run_id": self.run_id},
        )
        result = {
            "name": self.model_name,
            "version": version,
            "created": created,
            "aliases": sorted(hook.client.get_model_version(self.model_name, version).aliases),
            "champion_version": champion,
            "promoted": bool(decision["promote"]),
            "decision": decision,
        }
        result["mlflow_run_id"] = self._record(hook, tree, result)
        result["parent_run_id"] = tree[2]
        MlflowParentRunLink.persist(context, hook.run_url(tree[2], tree[0]))
        return result

    # -- OpenLineage -----------------------------------------------------------------------------

    def openlineage(self, stage: str) -> Any:
        """
        The run's model in; the registered version out: a dataset of type MODEL
        (``models/<name>/versions/<version>`` on the registry) with its aliases, run and the
        data it was trained on (``airflowMlops_modelVersion``).
        """
        from airflow_mlops import lineage

        tracking, registry = lineage.mlflow_uris(self.mlflow_conn_id)
        run_model = lineage.run_model_dataset(tracking, self.run_id, self.artifact_path)
        result = self._lineage_result if stage == "complete" else None
        outputs = []
        if isinstance(result, dict) and result.get("version"):
            tags = {k: self.lineage[k] for k in ("dataset_version", "feature_views") if self.lineage.get(k)}
            facets = lineage.model_version_facets(
                registry,
                self.model_name,
                result["version"],
                run_id=self.run_id,
                aliases=result.get("aliases") or (),
                champion=result.get("champion_version"),
                tags={k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in tags.items()},
                tracking_uri=tracking,
            )
            dataset = lineage.model_version_dataset(registry, self.model_name, result["version"])
            outputs.append(lineage.output_dataset(dataset, facets))
        return lineage.operator_lineage([lineage.input_dataset(run_model)], outputs)


# -- aliases -------------------------------------------------------------------------------------


class MlflowSetAliasOperator(MlopsBaseOperator):
    """
    Point ``alias`` of ``model_name`` at a version, given by number or by another alias.

    Idempotent: when the alias already points there nothing is written (``changed: False``).
    Typical uses: promote after a human approval (``alias="champion"``, ``version=<gate's
    challenger_version>``), or roll back (``alias="champion"``, ``from_alias="previous"``).

    :param model_name: registered model name (templated).
    :param alias: the alias to set (templated).
    :param version: the version number (templated); give this or ``from_alias``.
    :param from_alias: take the version this alias points at (templated).
    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    template_fields: Sequence[str] = ("model_name", "alias", "version", "from_alias")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#e6f5e9"

    def __init__(
        self,
        *,
        model_name: str,
        alias: str,
        version: str | int | None = None,
        from_alias: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (version is None) == (from_alias is None):
            raise ValueError(f"{self.task_id}: give exactly one of version and from_alias.")
        self.model_name = model_name
        self.alias = alias
        self.version = version
        self.from_alias = from_alias
        self.mlflow_conn_id = mlflow_conn_id

    def _target(self, hook: MlflowHook) -> str:
        if self.from_alias:
            target = hook.alias_version(self.model_name, self.from_alias)
            if target is None:
                raise ValueError(
                    f"{self.task_id}: model {self.model_name!r} has no alias {self.from_alias!r} to copy; "
                    "check the name, or set the alias first."
                )
            return str(target)
        version = str(self.version).strip()
        if not version.isdigit():
            raise ValueError(f"{self.task_id}: version must be a version number, got {self.version!r}.")
        hook.client.get_model_version(self.model_name, version)  # a clear MLflow error when it does not exist
        return version

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.hooks.mlflow import MlflowHook

        hook = MlflowHook(self.mlflow_conn_id)
        with hook.unreachable_as_error(f"{self.task_id} (set alias {self.alias!r} of {self.model_name!r})"):
            return self._execute(context, hook)

    def _execute(self, context: Context, hook: MlflowHook) -> dict[str, Any]:
        version = self._target(hook)
        previous = hook.set_alias(self.model_name, self.alias, version)
        changed = previous != version
        self.log.info(
            "%s alias %r: %s",
            self.model_name,
            self.alias,
            f"v{previous} -> v{version}" if changed else f"already v{version}",
        )
        MlflowModelVersionLink.persist(context, hook.model_version_url(self.model_name, version))
        return {
            "name": self.model_name,
            "alias": self.alias,
            "version": version,
            "previous_version": previous,
            "changed": changed,
        }

    def openlineage(self, stage: str) -> Any:
        """The model version the alias points at, out (with its aliases), once it was set."""
        from airflow_mlops import lineage

        result = self._lineage_result if stage == "complete" else None
        if not isinstance(result, dict):
            return None
        tracking, registry = lineage.mlflow_uris(self.mlflow_conn_id)
        version = result["version"]
        facets = lineage.model_version_facets(
            registry, self.model_name, version, aliases=[self.alias], tracking_uri=tracking
        )
        dataset = lineage.model_version_dataset(registry, self.model_name, version)
        return lineage.operator_lineage(outputs=[lineage.output_dataset(dataset, facets)])


# -- champion / challenger gate ------------------------------------------------------------------


def _metric_key(*parts: Any) -> str:
    """An MLflow metric name: only alphanumerics, ``_ - . / :`` and spaces are allowed."""
    return ".".join(re.sub(r"[^\w\-./: ]", "_", str(part)) for part in parts)


def _task_ids(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class _Decision:
    outcome: str  # promote | reject | approval | already_champion
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class ChampionChallengerGateOperator(BaseBranchOperator):
    """
    Compare a challenger with the champion on the same held-out data and branch on the result.

    Both versions are scored on the same rows of ``evaluation["data_path"]``, overall and for
    every value of each ``slices`` column. The challenger wins when its overall metric beats the
    champion's by more than ``min_improvement`` **and** no slice with at least
    ``min_slice_rows`` rows is worse by more than ``max_slice_regression``. Then the champion
    alias moves to it (with no champion yet, the challenger becomes champion) and the DAG
    follows ``deploy_task_ids``; otherwise it follows ``reject_task_ids`` (None: every
    downstream task is skipped). ``require_approval`` sends a promotion to a human instead
    (``approval_task_ids``, see :func:`champion_approval`), leaving the champion where it is:
    ``"always"`` for every winning challenger, ``"on_slice_regression"`` when only the slice
    rule fails.

    The comparison (metrics per slice for both versions, thresholds, decision, reason) is
    written to MLflow as a finished run in the model's experiment (metrics, tags and the
    artifact ``champion_challenger.json``) and as ``gate.*`` tags on the challenger version. It
    is also pushed to XCom under ``comparison``, with ``challenger_version`` and
    ``champion_version`` (the branch's own return value is not kept when tasks are skipped).
    A retry after a promotion finds the challenger already champion and follows the deploy path.

    :param model_name: registered model name (templated).
    :param evaluation: ``{"data_path", "features", "label", "metric", "higher_is_better",
        "dataset_version"}`` (templated): the held-out Parquet file (which also holds the
        ``slices`` columns) and how to score it; ``dataset_version`` is recorded.
    :param deploy_task_ids: task ids (or task group ids) to follow when the champion moved.
    :param challenger_version: the version to judge (templated); default: ``challenger_alias``'s.
    :param challenger_alias: alias of the challenger when ``challenger_version`` is None.
    :param champion_alias: alias of the serving model.
    :param slices: columns of the held-out file to compare by, e.g. ``["carrier", "origin"]``.
    :param min_improvement: how much the overall metric must beat the champion's by (strictly).
    :param max_slice_regression: how much worse than the champion a slice may be; None: no slice rule.
    :param min_slice_rows: slices with fewer held-out rows are reported but not judged.
    :param reject_task_ids: task ids to follow when the challenger loses; None skips all downstream.
    :param approval_task_ids: task ids of the approval step (required unless ``require_approval="never"``).
    :param require_approval: ``"never"``, ``"always"`` or ``"on_slice_regression"``.
    :param experiment_name: experiment of the comparison run; default: the challenger's run's.
    :param mlflow_conn_id: the ``mlflow`` connection.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "evaluation",
        "challenger_version",
        "challenger_alias",
        "champion_alias",
        "slices",
    )
    operator_extra_links = (MlflowModelVersionLink(), MlflowRunLink(), MlflowParentRunLink())
    ui_color = "#fff3d6"

    def __init__(
        self,
        *,
        model_name: str,
        evaluation: dict[str, Any],
        deploy_task_ids: str | Iterable[str],
        challenger_version: str | int | None = None,
        challenger_alias: str = "challenger",
        champion_alias: str = "champion",
        slices: Sequence[str] = (),
        min_improvement: float = 0.0,
        max_slice_regression: float | None = 0.02,
        min_slice_rows: int = 200,
        reject_task_ids: str | Iterable[str] | None = None,
        approval_task_ids: str | Iterable[str] | None = None,
        require_approval: str = "never",
        experiment_name: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if require_approval not in APPROVAL_MODES:
            raise ValueError(
                f"{self.task_id}: require_approval must be one of {APPROVAL_MODES}, got {require_approval!r}."
            )
        if require_approval != "never" and not approval_task_ids:
            raise ValueError(
                f"{self.task_id}: require_approval={require_approval!r} needs approval_task_ids "
                "(the approval step, e.g. made by champion_approval())."
            )
        self.model_name = model_name
        self.evaluation = evaluation
        self.deploy_task_ids = _task_ids(deploy_task_ids)
        self.challenger_version = challenger_version
        self.challenger_alias = challenger_alias
        self.champion_alias = champion_alias
        self.slices = list(slices)
        self.min_improvement = min_improvement
        self.max_slice_regression = max_slice_regression
        self.min_slice_rows = min_slice_rows
        self.reject_task_ids = _task_ids(reject_task_ids)
        self.approval_task_ids = _task_ids(approval_task_ids)
        self.require_approval = require_approval
        self.experiment_name = experiment_name
        self.mlflow_conn_id = mlflow_conn_id

    # -- what is compared --------------------------------------------------------------------

    def _challenger(self, hook: MlflowHook) -> str:
        if self.challenger_version not in (None, "", "None"):
            version = str(self.challenger_version).strip()
            hook.client.get_model_version(self.model_name, version)  # MLflow names a missing version
            return version
        version = hook.alias_version(self.model_name, self.challenger_alias)
        if version is None:
            raise ValueError(
                f"{self.task_id}: model {self.model_name!r} has no alias {self.challenger_alias!r}: "
                "register the challenger first (MlflowRegisterModelOperator) or pass challenger_version."
            )
        return str(version)

    # -- the rule ----------------------------------------------------------------------------

    def decide(self, compared: Comparison) -> _Decision:
        """Apply the rule (and ``require_approval``) to :func:`evaluate_against_champion`'s result."""
        metric = compared["metric"]
        ours = compared["challenger"]["overall"]["value"]
        winning = "approval" if self.require_approval == "always" else "promote"
        if compared["champion"] is None:
            return _Decision(winning, f"first model: no {self.champion_alias!r} yet ({metric}={ours:.4f})")
        theirs = compared["champion"]["overall"]["value"]
        versus = (
            f"challenger v{compared['challenger']['version']} {metric}={ours:.4f} vs "
            f"champion v{compared['champion']['version']} {theirs:.4f} ({compared['improvement']:+.4f})"
        )
        if not compared["beats_champion"]:
            return _Decision("reject", f"{versus}: not better by more than {self.min_improvement}")
        regressions = compared["slice_regressions"]
        if regressions:
            worst = ", ".join(
                f"{r['slice']}={r['value']} {r['challenger']:.4f} vs {r['champion']:.4f}"
                for r in regressions[:3]
            )
            outcome = "reject" if self.require_approval == "never" else "approval"
            return _Decision(
                outcome,
                f"{versus}, but {len(regressions)} slice(s) regress by more than "
                f"{self.max_slice_regression}: {worst}",
            )
        return _Decision(winning, f"{versus}: better overall and in every slice")

    def _branch(self, outcome: str) -> list[str] | None:
        if outcome in ("promote", "already_champion"):
            return self.deploy_task_ids
        if outcome == "approval":
            return self.approval_task_ids
        return self.reject_task_ids or None  # None: skip every downstream task

    # -- recording ---------------------------------------------------------------------------

    def _experiment_id(self, hook: MlflowHook, challenger: str) -> str:
        if self.experiment_name:
            return hook.experiment_id(self.experiment_name)
        return hook.version_experiment_id(self.model_name, challenger)

    @staticmethod
    def _metrics(comparison: Mapping[str, Any]) -> dict[str, float]:
        metric, metrics = comparison["metric"], {"rows": float(comparison["rows"])}
        for role in ("challenger", "champion"):
            scored = comparison[role]
            if scored is None:
                continue
            if scored["overall"]["value"] is not None:
                metrics[_metric_key(role, metric)] = scored["overall"]["value"]
            for column, values in scored["slices"].items():
                for value, result in values.items():
                    if result["value"] is not None:
                        metrics[_metric_key(role, metric, column, value)] = result["value"]
        if comparison["improvement"] is not None:
            metrics["improvement"] = comparison["improvement"]
        metrics["slice_regressions"] = float(len(comparison["slice_regressions"]))
        return metrics

    def _record(self, hook: MlflowHook, comparison: dict[str, Any], context: Context) -> tuple[str, str]:
        """The comparison as this task's run in the DAG run's tree: ``(run id, parent run id)``."""
        from airflow_mlops.runtimes.run_tree import TaskRef

        challenger, champion = comparison["challenger_version"], comparison["previous_champion"]
        tags = {
            "mlops.kind": "champion_challenger",
            "model_name": self.model_name,
            "challenger_version": challenger,
            "champion_version": champion or "",
            "outcome": comparison["outcome"],
            "reason": comparison["reason"][:_TAG_VALUE_MAX],
            "data_path": comparison["data_path"],
            "dataset_version": comparison["dataset_version"] or "",
        }
        task = TaskRef.from_ti(context["ti"])
        experiment_id = self._experiment_id(hook, challenger)
        parent = hook.dag_run_parent(experiment_id, task)
        run_id = hook.log_record_run(
            experiment_id,
            f"gate-{self.model_name}-v{challenger}-vs-v{champion or 'none'}",
            metrics=self._metrics(comparison),
            tags=tags,
            record=comparison,
            artifact_file="champion_challenger.json",
            task=task,
            parent_run_id=parent,
        )
        MlflowRunLink.persist(context, hook.run_url(run_id, experiment_id))
        MlflowParentRunLink.persist(context, hook.run_url(parent, experiment_id))
        return run_id, parent

    # -- run ---------------------------------------------------------------------------------

    def _compare(self, hook: MlflowHook, challenger: str, champion: str | None, context: Context) -> dict:
        evaluation = Evaluation.from_dict(self.evaluation, self.task_id)
        compared = evaluate_against_champion(
            hook,
            self.model_name,
            challenger,
            champion,
            evaluation,
            slices=self.slices,
            min_improvement=self.min_improvement,
            max_slice_regression=self.max_slice_regression,
            min_slice_rows=self.min_slice_rows,
        )
        decision = self.decide(compared)
        comparison = {
            "model_name": self.model_name,
            "challenger_version": challenger,
            "previous_champion": champion,
            **compared,
            "min_improvement": self.min_improvement,
            "max_slice_regression": self.max_slice_regression,
            "min_slice_rows": self.min_slice_rows,
            "require_approval": self.require_approval,
            "outcome": decision.outcome,
            "promote": decision.outcome == "promote",
            "reason": decision.reason,
        }
        comparison["mlflow_run_id"], comparison["parent_run_id"] = self._record(hook, comparison, context)
        hook.set_version_tags(
            self.model_name,
            challenger,
            {
                "gate.outcome": decision.outcome,
                "gate.reason": decision.reason[:_TAG_VALUE_MAX],
                "gate.champion_version": champion or "",
                "gate.mlflow_run_id": comparison["mlflow_run_id"],
            },
        )
        return comparison

    def choose_branch(self, context: Context) -> list[str] | None:
        from airflow_mlops.hooks.mlflow import MlflowHook

        hook = MlflowHook(self.mlflow_conn_id)
        with hook.unreachable_as_error(f"{self.task_id} (gate {self.model_name!r})"):
            return self._choose_branch(context, hook)

    def _choose_branch(self, context: Context, hook: MlflowHook) -> list[str] | None:
        challenger = self._challenger(hook)
        champion = hook.alias_version(self.model_name, self.champion_alias)
        if champion == challenger:  # a retry after the promotion, or nothing new
            reason = f"version {challenger} already is {self.champion_alias!r}"
            comparison = {
                "model_name": self.model_name,
                "challenger_version": challenger,
                "previous_champion": champion,
                "outcome": "already_champion",
                "promote": False,
                "reason": reason,
            }
        else:
            comparison = self._compare(hook, challenger, champion, context)
            if comparison["promote"]:  # recorded first: a crash here leaves a record and no promotion
                hook.set_alias(self.model_name, self.champion_alias, challenger)
        # the first line of the task's log: the gate's decision and its numbers
        self.log.info(
            "Gate %s: %s v%s — %s", self.model_name, comparison["outcome"], challenger, comparison["reason"]
        )
        if comparison.get("mlflow_run_id"):
            self.log.info("Comparison recorded in MLflow run %s", comparison["mlflow_run_id"])
        ti = context["ti"]
        ti.xcom_push(key="comparison", value=comparison)
        ti.xcom_push(key="challenger_version", value=challenger)
        ti.xcom_push(key="champion_version", value=hook.alias_version(self.model_name, self.champion_alias))
        MlflowModelVersionLink.persist(context, hook.model_version_url(self.model_name, challenger))
        return self._branch(comparison["outcome"])

    # -- OpenLineage ---------------------------------------------------------------------------

    def get_openlineage_facets_on_start(self) -> Any:
        return self._openlineage(done=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self._openlineage(done=True)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self._openlineage(done=False)

    def _openlineage(self, done: bool) -> Any:
        """
        The held-out data and the challenger (and champion) versions in; once the gate decided,
        its decision as the ``airflowMlops_gate`` run facet (read back from the tags the gate
        wrote on the challenger) and, when the champion moved, the challenger version out with
        its new aliases.
        """
        try:
            from airflow_mlops import lineage
            from airflow_mlops.hooks.mlflow import MlflowHook

            tracking, registry = lineage.mlflow_uris(self.mlflow_conn_id)
            inputs = []
            if (self.evaluation or {}).get("data_path"):
                inputs.append(lineage.file_input(self.evaluation["data_path"]))
            given = self.challenger_version not in (None, "", "None")
            challenger = str(self.challenger_version).strip() if given else None
            if not done:
                if challenger:
                    dataset = lineage.model_version_dataset(registry, self.model_name, challenger)
                    inputs.append(lineage.input_dataset(dataset))
                return lineage.operator_lineage(inputs)
            hook = MlflowHook(self.mlflow_conn_id)
            challenger = challenger or hook.alias_version(self.model_name, self.challenger_alias)
            if challenger is None:
                return lineage.operator_lineage(inputs)
            mv = hook.client.get_model_version(self.model_name, challenger)
            tags, aliases = dict(mv.tags or {}), list(mv.aliases or [])
            champion_now = hook.alias_version(self.model_name, self.champion_alias)
            outcome = tags.get("gate.outcome") or ("already_champion" if champion_now == challenger else None)
            champion_before = tags.get("gate.champion_version") or None
            for version in (challenger, champion_before):
                if version:
                    dataset = lineage.model_version_dataset(registry, self.model_name, version)
                    inputs.append(lineage.input_dataset(dataset))
            run_facets = {}
            if outcome:
                key, facet = lineage.custom_facet(
                    "GateRunFacet",
                    modelName=self.model_name,
                    outcome=outcome,
                    challengerVersion=str(challenger),
                    championVersion=champion_before,
                    reason=tags.get("gate.reason"),
                    comparisonRunId=tags.get("gate.mlflow_run_id"),
                )
                run_facets[key] = facet
            outputs = []
            if champion_now == str(challenger):
                facets = lineage.model_version_facets(
                    registry,
                    self.model_name,
                    challenger,
                    run_id=mv.run_id,
                    aliases=aliases,
                    champion=champion_now,
                    tracking_uri=tracking,
                )
                dataset = lineage.model_version_dataset(registry, self.model_name, challenger)
                outputs.append(lineage.output_dataset(dataset, facets))
            return lineage.operator_lineage(inputs, outputs, run_facets)
        except Exception as err:  # lineage must never fail the gate
            self.log.warning("OpenLineage facets of %s not built: %s", self.task_id, err)
            return None


def champion_approval(
    gate: ChampionChallengerGateOperator,
    *,
    task_id: str = "approve_champion",
    promote_task_id: str = "promote_champion",
    deploy: BaseOperator | Sequence[BaseOperator] | None = None,
    **approval_kwargs: Any,
) -> tuple[BaseOperator, MlflowSetAliasOperator]:
    """
    The human approval step of a gate: Airflow's ``ApprovalOperator`` then an alias move.

    Call it inside the DAG, after the gate: ``gate >> approve >> promote`` is wired, and
    ``promote >> deploy`` when ``deploy`` is given. "Approve" runs ``promote`` (the champion
    alias moves to the gate's ``challenger_version``) and then ``deploy``; "Reject" skips both.
    Because ``deploy`` then has two upstreams (the gate and ``promote``), it needs
    ``trigger_rule="none_failed_min_one_success"``.

    :param gate: the gate; its ``approval_task_ids`` must contain ``task_id``.
    :param task_id: id of the ``ApprovalOperator``.
    :param promote_task_id: id of the :class:`MlflowSetAliasOperator` that promotes.
    :param deploy: the deployment task(s), also in the gate's ``deploy_task_ids``.
    :param approval_kwargs: more ``ApprovalOperator`` arguments (``subject``, ``body``,
        ``assigned_users``, ``response_timeout``, ``notifiers``...).
    """
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    if task_id not in gate.approval_task_ids:
        raise ValueError(
            f"champion_approval: {gate.task_id}.approval_task_ids is {gate.approval_task_ids}; "
            f"add {task_id!r} so the gate can branch to the approval step."
        )
    deploys = [deploy] if deploy is not None and not isinstance(deploy, Sequence) else list(deploy or [])
    for task in deploys:
        if task.trigger_rule == "all_success":
            raise ValueError(
                f"champion_approval: {task.task_id} follows both {gate.task_id} and {promote_task_id}; "
                "give it trigger_rule='none_failed_min_one_success'."
            )
    pull = f"ti.xcom_pull(task_ids='{gate.task_id}', key='comparison')"
    approval_kwargs.setdefault(
        "subject",
        f"Promote {gate.model_name} v{{{{ {pull}['challenger_version'] }}}} to {gate.champion_alias}?",
    )
    approval_kwargs.setdefault("body", f"{{{{ {pull}['reason'] }}}}")
    approve = ApprovalOperator(task_id=task_id, ignore_downstream_trigger_rules=True, **approval_kwargs)
    promote = MlflowSetAliasOperator(
        task_id=promote_task_id,
        model_name=gate.model_name,
        alias=gate.champion_alias,
        version=f"{{{{ ti.xcom_pull(task_ids='{gate.task_id}', key='challenger_version') }}}}",
        mlflow_conn_id=gate.mlflow_conn_id,
    )
    gate >> approve >> promote
    for task in deploys:
        promote >> task
    return approve, promote
