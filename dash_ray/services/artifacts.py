"""Artifacts: result files written through fsspec under DASH_ARTIFACTS_URL, served by the gateway."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import threading
from typing import IO, Any

import fsspec

__all__ = ["ArtifactStore", "InvalidArtifactPath", "job_dir"]

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,199}$")


def job_dir(user_id: str, job_id: str) -> str:
    """The folder of a job's result files: `user/job` (a job scheduler's job `repeat:s:t` in
    `repeat@s@t`: ':' is no path segment's, and no other job id holds '@')."""
    return f"{user_id}/{job_id.replace(':', '@')}"


class InvalidArtifactPath(ValueError):
    """The path is not `user/job/file` made of plain segments."""


class ArtifactStore:
    """Files under one root (a local folder or any fsspec URL), addressed as `user/job/name`."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self._digests: dict[tuple[str, Any, str], str] = {}  # (path, size, mtime) -> SHA-256
        self._lock = threading.Lock()
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in (self.fs.protocol or ())
        if self.local:
            os.makedirs(self.root, mode=0o700, exist_ok=True)

    @staticmethod
    def check(rel: str) -> list[str]:
        """The segments of a relative path; raises InvalidArtifactPath on anything odd."""
        parts = rel.split("/")
        if len(parts) < 3 or not all(_SEGMENT.match(p) for p in parts) or any(p in (".", "..") for p in parts):
            raise InvalidArtifactPath(f"bad artifact path {rel!r}")
        return parts

    def _full(self, rel: str) -> str:
        self.check(rel)
        return posixpath.join(self.root, rel)

    def put(self, rel: str, data: bytes) -> str:
        """Write a file; returns its relative path."""
        full = self._full(rel)
        if self.local:  # private to the server's user: folders 0700, files 0600
            os.makedirs(posixpath.dirname(full), mode=0o700, exist_ok=True)
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return rel
        self.fs.makedirs(posixpath.dirname(full), exist_ok=True)
        with self.fs.open(full, "wb") as f:
            f.write(data)
        return rel

    def delete(self, rel: str) -> None:
        """Remove a file if it exists."""
        full = self._full(rel)
        if self.fs.exists(full):
            self.fs.rm(full)

    def exists(self, rel: str) -> bool:
        """True if the file exists."""
        return bool(self.fs.exists(self._full(rel)))

    def open(self, rel: str) -> IO[Any]:
        """Open a file for reading (binary)."""
        return self.fs.open(self._full(rel), "rb")

    def digest(self, rel: str) -> str:
        """A file's SHA-256 (hex); remembered while its size and modification time stay the same,
        so a file read once is not read again until it changes."""
        info = self.fs.info(self._full(rel))
        stamp = (rel, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("created")))
        with self._lock:
            found = self._digests.get(stamp)
        if found is None:
            h = hashlib.sha256()
            with self.open(rel) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            found = h.hexdigest()
            with self._lock:  # (called from threads)
                if len(self._digests) >= 256:
                    self._digests.pop(next(iter(self._digests)))
                self._digests[stamp] = found
        return found

    def local_path(self, rel: str) -> str:
        """Where a file lives (a path for local storage, a URL otherwise)."""
        return self._full(rel)

    @staticmethod
    def url_for(rel: str) -> str:
        """The gateway URL path that serves this artifact."""
        return f"/v1/artifacts/{rel}"
