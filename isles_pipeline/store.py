"""Where case files live: one small store over a local path or an fsspec URL.

Every file access of the pipeline goes through :class:`CaseStore`, so that ``ISLES_DATA_DIR`` can
be a local folder or shared storage (``s3://``, ``gs://``; ``memory://`` in tests) alike.
Writes are atomic: bytes go to a temporary sibling that is renamed into place, so a failure
leaves either the previous good file or nothing, never a half-written one.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

from upath import UPath

TMP_MARK = ".tmp-"


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
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}{TMP_MARK}{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            self._replace(tmp, target)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
        return sha256_hex(data)

    def write_text(self, target: UPath, text: str) -> str:
        return self.write_bytes(target, text.encode("utf-8"))

    @staticmethod
    def _replace(src: UPath, dst: UPath) -> None:
        if src.protocol in ("", "file", "local"):
            os.replace(src.path, dst.path)  # atomic on POSIX, replaces an existing file
        else:
            # Object stores have no atomic rename; a copy then delete publishes whole objects only.
            src.fs.mv(src.path, dst.path)

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
        return target.path if target.protocol in ("", "file", "local") else None

    def leftovers(self) -> Iterator[UPath]:
        """Temporary files left by an interrupted write (there should be none)."""
        if self.root.exists():
            yield from (p for p in self.root.rglob("*") if TMP_MARK in p.name)
