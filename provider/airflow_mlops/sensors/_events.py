"""Shared by the deferrable sensors: the backstop timeout, and failing on a trigger's event."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn


def backstop_timeout(sensor: Any) -> timedelta:
    """``defer``'s timeout: a backstop only (e.g. no triggerer running), later than the trigger's
    own deadline so that the trigger reports the timeout, with its message, first."""
    return timedelta(seconds=sensor.timeout + max(60.0, 2 * sensor.poke_interval))


def raise_for_trigger_event(sensor: Any, event: dict[str, Any] | None, hint: str) -> NoReturn:
    """
    Fail the sensor on a ``timeout`` or ``error`` event (skip it on a timeout with ``soft_fail``).

    :param sensor: the sensor resuming in ``execute_complete``.
    :param event: the trigger's event payload.
    :param hint: what to do about a timeout, appended to the trigger's message.
    """
    from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, AirflowSkipException

    message = (event or {}).get("message") or f"the trigger returned no result ({event!r})"
    if (event or {}).get("status") == "timeout":
        if sensor.soft_fail:
            raise AirflowSkipException(f"{message} Skipping (soft_fail=True).")
        raise AirflowSensorTimeout(f"{message} {hint}")
    raise AirflowException(f"{sensor.task_id}: {message}")
