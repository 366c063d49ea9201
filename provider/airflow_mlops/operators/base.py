"""Base class of the provider's operators."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: the methods whose return value is the task's result (kept for the OpenLineage methods)
_RESULT_METHODS = ("execute", "execute_complete")


def _keeps_result(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self._lineage_result = result
        return result

    wrapper._keeps_result = True
    return wrapper


class MlopsBaseOperator(BaseOperator):
    """
    An operator whose dict result is also pushed key by key (``multiple_outputs``), so a
    downstream task can take one field as an argument: ``ingest.output["path"]``.

    OpenLineage: the OpenLineage provider calls ``get_openlineage_facets_on_start`` before
    ``execute`` and ``get_openlineage_facets_on_complete`` / ``_on_failure`` after it, in the task
    process. Each operator says what it read and wrote in :meth:`openlineage` (naming and facets
    in :mod:`airflow_mlops.lineage`), from its rendered arguments and from what ``execute`` (or
    ``execute_complete``) returned, kept here as ``_lineage_result``. OpenLineage is imported
    only inside these methods.
    """

    #: what ``execute`` / ``execute_complete`` returned in this task process (None before)
    _lineage_result: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _RESULT_METHODS:
            method = getattr(cls, name, None)
            if callable(method) and not getattr(method, "_keeps_result", False):
                setattr(cls, name, _keeps_result(method))

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)

    # -- OpenLineage ---------------------------------------------------------------------------

    def openlineage(self, stage: str) -> OperatorLineage | None:
        """
        Inputs, outputs and facets of this task at ``stage`` (``start``, ``complete`` or
        ``failure``); the result of ``execute`` is ``self._lineage_result`` at ``complete``.
        None: nothing to say (the OpenLineage provider then falls back to hook lineage).
        """
        return None

    def _openlineage(self, stage: str) -> OperatorLineage | None:
        try:
            return self.openlineage(stage)
        except Exception as err:  # lineage must never break a task (nor hide its own error)
            self.log.warning("OpenLineage facets of %s (%s) not built: %s", self.task_id, stage, err)
            self.log.debug("Details:", exc_info=True)
            return None

    def get_openlineage_facets_on_start(self) -> OperatorLineage | None:
        return self._openlineage("start")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        return self._openlineage("complete")

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage | None:
        return self._openlineage("failure")
