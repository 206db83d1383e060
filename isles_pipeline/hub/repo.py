"""The repos a local Hub serves: files scanned from a folder, their git and LFS ids, and the
JSON the Hub answers about them (repo info, tree, paths-info).

Digests are computed once per file version (path, size, mtime), so a 300 MB shard is hashed
once, not on every request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from isles_pipeline.store import TMP_MARK

REPO_TYPES: tuple[str, ...] = ("dataset", "model")
DEFAULT_REVISION = "main"
LFS_THRESHOLD_BYTES = 1 << 20  # files above 1 MiB (and every parquet file) are served as LFS
logger = logging.getLogger(__name__)

# Folders a local snapshot may contain that are not part of the repo.
IGNORED_DIRS = frozenset({".git", ".cache"})
HASH_CHUNK_BYTES = 1 << 20
# Where ``isles-pipeline hub serve`` keeps the digests of a served folder (inside an ignored folder).
DIGEST_JOURNAL = Path(".cache") / "isles-hub-digests.jsonl"


# --------------------------------------------------------------------------------------------
# Hashing: git blob ids and LFS sha256, computed once per file version.


class DigestCache:
    """Digests of files keyed by (path, size, mtime_ns): a 300 MB file is hashed once, not per request.

    With ``journal`` (a JSON-lines file), digests also outlive the process: a mirror of the whole
    dataset (~99 GB) is hashed on its first listing only, not every time the server starts.
    """

    def __init__(self, journal: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, str, int, int], str] = {}
        self._key_locks: dict[tuple[str, str, int, int], threading.Lock] = {}
        self._journal = journal
        if journal is not None and journal.exists():
            for line in journal.read_text().splitlines():
                algorithm, abs_path, size, mtime_ns, value = json.loads(line)
                self._digests[(algorithm, abs_path, size, mtime_ns)] = value

    def _remember(self, key: tuple[str, str, int, int], value: str) -> None:
        self._digests[key] = value
        if self._journal is None:
            return
        try:
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            with self._journal.open("a") as journal:
                journal.write(json.dumps([*key, value]) + "\n")
        except OSError as exc:  # a read-only mirror: keep serving, hash again next start
            logger.warning("cannot record digests in %s (%s); they will be computed again next time", self._journal, exc)
            self._journal = None

    def digest(self, algorithm: str, abs_path: str, size: int, mtime_ns: int) -> str:
        """Hex digest of the file: ``algorithm`` is "sha256" or "git-blob" (git's blob sha1)."""
        key = (algorithm, abs_path, size, mtime_ns)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for one new file hash it once
            with self._lock:
                if key in self._digests:
                    return self._digests[key]
            value = _hash_file(algorithm, abs_path, size)
            with self._lock:
                self._remember(key, value)
                self._key_locks.pop(key, None)
        return value


def _hash_file(algorithm: str, abs_path: str, size: int) -> str:
    if algorithm == "sha256":
        hasher = hashlib.sha256()
    elif algorithm == "git-blob":
        hasher = hashlib.sha1(b"blob %d\0" % size)
    else:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    with open(abs_path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


SHARED_DIGESTS = DigestCache()


def file_sha256(path: str | os.PathLike[str], digests: DigestCache = SHARED_DIGESTS) -> str:
    """sha256 of a local file through ``digests``, keyed as a served repo keys it: a server in this
    process that later serves the file finds it already hashed."""
    abs_path = str(Path(path).resolve())
    st = os.stat(abs_path)
    return digests.digest("sha256", abs_path, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------------------------
# A repo served from a local folder.


@dataclass(frozen=True)
class FileStat:
    """One file of a repo as found on disk."""

    path: str  # posix path inside the repo
    abs_path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileEntry:
    """A file with its Hub identifiers: ``blob_oid`` is the git blob id (of the pointer for LFS)."""

    stat: FileStat
    blob_oid: str
    sha256: str | None  # set for LFS files only
    pointer_size: int | None

    @property
    def etag(self) -> str:
        """What ``resolve`` sends as ETag: the sha256 for LFS files, else the git blob id."""
        return self.sha256 or self.blob_oid

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_oid, "size": self.stat.size, "path": self.stat.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": self.stat.size, "pointerSize": self.pointer_size}
        return entry


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the Hub would store this file with git-lfs (big files and every parquet file)."""
    return size > LFS_THRESHOLD_BYTES or path.endswith(".parquet")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def scan_folder(folder: Path) -> dict[str, FileStat]:
    """Every file under ``folder`` by repo path, sorted; skips .git/.cache and half-written temp files.

    Symbolic links are followed only where they lead inside ``folder`` (a mirror may link
    duplicate files); a link out of it is not served, and a directory reached twice (a link
    loop) is walked once."""
    found: dict[str, FileStat] = {}
    root = os.path.realpath(folder)
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked or not _inside(real, root):
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in filenames:
            if TMP_MARK in name:
                continue
            abs_path = os.path.join(dirpath, name)
            if not _inside(os.path.realpath(abs_path), root):
                continue
            try:
                st = os.stat(abs_path)
            except (FileNotFoundError, OSError):  # removed while we walked, or a dangling/looping link
                continue
            rel = Path(abs_path).relative_to(folder).as_posix()
            found[rel] = FileStat(rel, abs_path, st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


def listing_sha1(stats: list[FileStat]) -> str:
    """A deterministic 40-hex id of a set of files, from their paths, sizes and mtimes."""
    hasher = hashlib.sha1()
    for stat in stats:
        hasher.update(f"{stat.path}\0{stat.size}\0{stat.mtime_ns}\n".encode())
    return hasher.hexdigest()


def _newest_iso(stats: Iterable[FileStat]) -> str:
    """The newest mtime of ``stats`` (the epoch if none) as the Hub writes dates."""
    newest = max((s.mtime_ns for s in stats), default=0)
    moment = datetime.fromtimestamp(newest / 1e9, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class RepoSnapshot:
    """A repo's files at one moment; every answer to one request comes from one snapshot."""

    def __init__(self, repo_type: str, repo_id: str, files: dict[str, FileStat], digests: DigestCache):
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.files = files
        self.commit = listing_sha1(list(files.values()))
        self._digests = digests

    def accepts_revision(self, revision: str) -> bool:
        return revision in (DEFAULT_REVISION, self.commit)

    def file_entry(self, path: str) -> FileEntry | None:
        stat = self.files.get(path)
        if stat is None:
            return None
        if not is_lfs_path(path, stat.size):
            return FileEntry(stat, self._digest("git-blob", stat), None, None)
        sha256 = self._digest("sha256", stat)
        pointer = lfs_pointer(sha256, stat.size)
        return FileEntry(stat, git_blob_sha1(pointer), sha256, len(pointer))

    def _digest(self, algorithm: str, stat: FileStat) -> str:
        return self._digests.digest(algorithm, stat.abs_path, stat.size, stat.mtime_ns)

    def is_dir(self, path: str) -> bool:
        return path == "" or any(p.startswith(path + "/") for p in self.files)

    def _files_under(self, directory: str) -> list[FileStat]:
        prefix = directory + "/" if directory else ""
        return [stat for p, stat in self.files.items() if p.startswith(prefix)]

    def dir_entry(self, path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": listing_sha1(self._files_under(path)), "size": 0, "path": path}

    def entry_json(self, path: str, expand: bool) -> dict[str, Any] | None:
        """The tree/paths-info entry of a file or directory, or None if neither exists."""
        entry = self.file_entry(path)
        if entry is not None:
            result = entry.to_json()
        elif path and self.is_dir(path):
            result = self.dir_entry(path)
        else:
            return None
        if expand:
            result["lastCommit"] = self._last_commit(path)
        return result

    def _last_commit(self, path: str) -> dict[str, str]:
        stats = [self.files[path]] if path in self.files else self._files_under(path)
        return {"id": self.commit, "title": "local snapshot", "date": _newest_iso(stats)}

    def tree(self, directory: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        """Entries under ``directory``: its children, or every descendant when ``recursive``."""
        prefix = directory + "/" if directory else ""
        paths: set[str] = set()
        for path in self.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            paths.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        directories = sorted(p for p in paths if p not in self.files)
        files = sorted(p for p in paths if p in self.files)
        return [self.entry_json(p, expand) for p in directories + files]  # type: ignore[misc]

    def repo_info(self) -> dict[str, Any]:
        return {
            "id": self.repo_id,
            "sha": self.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "lastModified": _newest_iso(self.files.values()),
            "siblings": [{"rfilename": path} for path in self.files],
        }


class LocalRepo:
    """A Hub repo whose files are the files under a local folder (rescanned on every request)."""

    def __init__(self, repo_type: str, repo_id: str, folder: Path, digests: DigestCache):
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {repo_type!r}")
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
            raise ValueError(f"invalid repo id {repo_id!r}: expected 'org/name' or 'name'")
        if not Path(folder).is_dir():
            raise ValueError(f"repo folder {folder} is not a directory")
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.folder = Path(folder).resolve()
        self._digests = digests

    def snapshot(self) -> RepoSnapshot:
        return RepoSnapshot(self.repo_type, self.repo_id, scan_folder(self.folder), self._digests)


