"""Serving stored files (Data Docs, drift reports) from a folder or an object store, safely.

Both kinds of root answer the same two questions here: which file a requested path names once
resolved (it must stay under the root), and how to send it. A local file is streamed from disk;
an object of the store is read whole (reports, plots and Data Docs pages are small).

Only light imports at module level: plugins are loaded by every Airflow process.
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import HTTPException, status
from fastapi.responses import FileResponse, Response


def under(root: Any, path: str | os.PathLike, missing: str) -> tuple[tuple[str, ...], Any]:
    """
    ``(parts, target)``: what ``path`` names under ``root`` once resolved, as its parts relative
    to ``root`` and as a path object (which may not exist); 404 with ``missing`` for a path that
    leaves ``root`` or names ``root`` itself.

    :param root: a local folder (``..`` and symbolic links are followed) or an ``ObjectStoragePath``
        (no links, no folders: ``..`` is resolved on the key, which cannot climb above ``root``).
    :param path: relative to ``root``, or absolute: a file path under a local root, a location
        (``s3://bucket/key``) under a store's.
    """
    if isinstance(root, Path):
        root = root.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or target == root:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)
        return target.relative_to(root).parts, target
    from airflow_mlops import storage

    text = os.fspath(path)
    if storage.is_url(text):
        base = storage.location(root).rstrip("/") + "/"
        if not text.startswith(base):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)
        text = text[len(base) :]
    elif text.startswith("/"):  # a local file's path: not in the store
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)
    parts = PurePosixPath(posixpath.normpath("/" + text)).parts[1:]
    if not parts:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)
    return parts, root.joinpath(*parts)


def stored_file(root: Any, path: str | os.PathLike, missing: str) -> Any:
    """The file ``path`` names under ``root`` (see :func:`under`); 404 for anything else."""
    target = under(root, path, missing)[1]
    if not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)
    return target


def file_response(target: Any, media_type: str | None = None, **kwargs: Any) -> Response:
    """``target`` as a response: streamed from disk, or the bytes of a stored object."""
    if isinstance(target, Path):
        return FileResponse(target, media_type=media_type, **kwargs)
    # what Starlette's FileResponse falls back to, as for a local file
    media_type = media_type or mimetypes.guess_type(target.name)[0] or "text/plain; charset=utf-8"
    return Response(target.read_bytes(), media_type=media_type, **kwargs)
