"""Attach what a task produced (dataset version, model version, drift score) to its Asset events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow.sdk import Asset, AssetAlias


def attach_outlet_extra(context: Any, outlets: Iterable[Any], extra: dict[str, Any]) -> None:
    """Put ``extra`` on the event of every Asset outlet (alias outlets are left to the caller)."""
    for outlet in outlets or ():
        if isinstance(outlet, Asset):
            context["outlet_events"][outlet].extra.update(extra)


def emit_through_aliases(context: Any, outlets: Iterable[Any], asset: Asset, extra: dict[str, Any]) -> bool:
    """
    Emit an event for ``asset`` through every AssetAlias outlet.

    An Asset outlet always gets an event when the task succeeds; an alias outlet only when
    the task adds one, which is how a task emits an event *conditionally* (drift found).

    :return: whether the task had an alias to emit through.
    """
    emitted = False
    for outlet in outlets or ():
        if isinstance(outlet, AssetAlias):
            context["outlet_events"][outlet].add(asset, extra=extra)
            emitted = True
    return emitted
