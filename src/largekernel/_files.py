"""Writing a user's files whole or not at all.

Every file ``largekernel`` writes for a user (results, reports, figures,
metrics, converted models, the cached datasets) goes through
:func:`replacing`: written under a temporary name beside it, then renamed
over it in one step. A reader, a crash or a full disk midway never sees or
leaves part of a file; a failed write leaves the previous file as it was.
Files are created with the user's umask, like any other program's.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = ["replacing", "write_text", "write_json", "fsync_dir"]


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` (created or renamed files) durable."""
    if os.name != "nt":  # Windows cannot open a directory; NTFS journals renames itself
        _fsync(path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path to write ``path``'s new content to; when the block ends without an error it becomes ``path``.

    The yielded path is a new, unique name in ``path``'s folder (made if missing) ending in ``path``'s suffix, so
    writers that choose a format by the suffix (``savefig``, ``np.savez``) choose the same one. The block
    creates the file; on leaving it the file is made durable and renamed over ``path`` (atomic on one file
    system); on an error it is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` whole (:func:`replacing`)."""
    with replacing(path) as tmp:
        with open(tmp, "x") as f:
            f.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` whole (:func:`replacing`); ``dump_kwargs`` go to ``json.dumps``."""
    write_text(path, json.dumps(obj, indent=2, **dump_kwargs))
