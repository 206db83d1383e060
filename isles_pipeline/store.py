"""Where case files live: one small store over a local path or an fsspec URL.

Every file access of the pipeline goes through :class:`CaseStore`, so that ``ISLES_DATA_DIR`` can
be a local folder or shared storage (``s3://``, ``gs://``; ``memory://`` in tests) alike.
Writes are atomic, so a failure leaves either the previous good file or nothing, never a
half-written one: on a local disk bytes go to a temporary sibling that is renamed into place; on an
object store each file is one PUT, which the store publishes whole or not at all (no temporary
objects, no copy). A writer killed mid-write can leave a local temporary file behind;
:meth:`CaseStore.remove_leftovers` removes those of a case before the case is written again.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator

from upath import UPath

TMP_MARK = ".tmp-"
# A write of the largest case file takes well under a second; a minute-old temporary file is dead.
LEFTOVER_MIN_AGE_S = 60.0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CaseStore:
    """Files under ``<root>/cases/<case id>/`` and pipeline outputs under ``<root>/<area>/``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = UPath(root)

    def __repr__(self) -> str:
        return f"CaseStore({str(self.root)!r})"

    def path(self, *parts: str) -> UPath:
        return self.root.joinpath(*parts)

    def case_path(self, case_id: str, name: str = "") -> UPath:
        return self.path("cases", case_id, name) if name else self.path("cases", case_id)

    def write_bytes(self, target: UPath, data: bytes) -> str:
        """Write ``data`` atomically to ``target``; return its sha256."""
        if not is_local(target):
            target.fs.pipe_file(target.path, data)
            return sha256_hex(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}{TMP_MARK}{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp.path, target.path)  # atomic on POSIX, replaces an existing file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return sha256_hex(data)

    def write_text(self, target: UPath, text: str) -> str:
        return self.write_bytes(target, text.encode("utf-8"))

    def read_bytes(self, target: UPath) -> bytes:
        return target.read_bytes()

    def sha256(self, target: UPath) -> str | None:
        """sha256 of a file, or None if it does not exist."""
        if not target.exists():
            return None
        digest = hashlib.sha256()
        with target.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def local_path(self, target: UPath) -> str | None:
        """A plain filesystem path for tools that need one, or None for remote storage."""
        return target.path if is_local(target) else None

    def leftovers(self, case_id: str | None = None) -> Iterator[UPath]:
        """Temporary files left by an interrupted write, of one case or of the whole store."""
        folder = self.case_path(case_id) if case_id else self.root
        if folder.exists():
            yield from (p for p in folder.rglob("*") if TMP_MARK in p.name)

    def remove_leftovers(self, case_id: str, min_age_s: float = LEFTOVER_MIN_AGE_S) -> int:
        """Delete the case's temporary files of crashed writes; return how many there were.

        A local temporary file younger than ``min_age_s`` may belong to a write still in flight in
        another run, so it is left alone. Object stores never hold temporary objects of a live write
        (each file is one PUT), so any found there is a leftover."""
        found = [p for p in self.leftovers(case_id) if not is_local(p) or _age_s(p) >= min_age_s]
        for path in found:
            path.unlink(missing_ok=True)
        return len(found)


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def _age_s(path: UPath) -> float:
    return time.time() - os.stat(path.path).st_mtime
