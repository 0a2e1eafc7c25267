"""Input images: http(s) from allowed hosts, file:// under allowed folders, or data: URLs; checked."""

from __future__ import annotations

import base64
import errno
import io
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpcore

from dash_ray.config import Settings
from dash_ray.errors import WorkerError
from dash_ray.models.images import IMAGE_FORMATS_TEXT, PIL_FORMATS
from dash_ray.services.netguard import PrivateAddress, pinned_url

__all__ = ["fetch_bytes", "load_image", "png_bytes"]



def fetch_bytes(url: str, settings: Settings, uploads: Callable[[str], bytes] | None = None) -> bytes:
    """The bytes behind an image URL, within DASH_MAX_IMAGE_BYTES; WorkerError with the reason.
    `uploads` reads an `upload://` reference (from the job owner's uploads)."""
    limit = settings.max_image_bytes
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("upload", "artifact"):  # an upload, or a result file of the owner's (a resolved job://)
        if uploads is None:
            raise WorkerError(f"{scheme}:// references are not available here")
        try:
            data = uploads(url)
        except (OSError, ValueError):
            raise WorkerError(f"no such {'upload' if scheme == 'upload' else 'result file'} (it was deleted, or "
                              "is not the job owner's)") from None
        if len(data) > limit:
            raise WorkerError(f"image too large (over {limit} bytes)")
        return data
    if scheme == "data":
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/"):
            raise WorkerError("data URL must be an image (data:image/...)")
        if len(payload) * 3 // 4 > limit:
            raise WorkerError(f"image too large (over {limit} bytes)")
        try:
            return base64.b64decode(payload, validate=True) if ";base64" in header else unquote(payload).encode("latin-1")
        except ValueError as exc:
            raise WorkerError(f"bad data URL: {exc}") from None
    if scheme == "file":
        return _read_file(Path(unquote(urlparse(url).path)), settings)
    if scheme in ("http", "https"):
        return _fetch_http(url, settings)
    if scheme == "job":
        raise WorkerError("a job:// image was not resolved before the run")
    raise WorkerError("image URL must be http(s), file:// or data:")


def _inside(path: str, folders: list[Path]) -> bool:
    p = Path(path)
    return any(p == d or d in p.parents for d in folders)


def _read_file(path: Path, settings: Settings) -> bytes:
    """A file under DASH_ALLOWED_FILE_DIRS, read safely: the last component may not be a
    symlink (O_NOFOLLOW), it must be a regular file, and the file actually opened must lie
    under an allowed folder (checked on the open descriptor, so a symlink swapped in between a
    check and the open cannot lead elsewhere)."""
    allowed = [Path(d).resolve() for d in settings.allowed_file_dirs]
    if not _inside(os.path.abspath(path), allowed):
        raise WorkerError("file:// URL outside the allowed folders (DASH_ALLOWED_FILE_DIRS)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else (exc.strerror or "cannot open")
        raise WorkerError(f"cannot read {path.name}: {reason}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WorkerError(f"cannot read {path.name}: not a regular file")
        if not _inside(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else str(path.resolve()),
                       allowed):
            raise WorkerError("file:// URL outside the allowed folders (DASH_ALLOWED_FILE_DIRS)")
        if st.st_size > settings.max_image_bytes:
            raise WorkerError(f"image too large (over {settings.max_image_bytes} bytes)")
        return f.read(settings.max_image_bytes + 1)


def _fetch_http(url: str, settings: Settings) -> bytes:
    """An image from an allowed host, on the address checked by `netguard.pinned_url` (pinned: the
    connection goes to that address, with the host name in `Host` and TLS SNI), within
    DASH_MAX_IMAGE_BYTES and a total deadline of DASH_IMAGE_FETCH_TIMEOUT_S: connect, TLS, the
    request, the answer's headers and body all told (every read waits only for what is left of
    it, so a server that drips its answer a byte at a time is cut all the same)."""
    timeout_s = settings.image_fetch_timeout_s
    deadline = time.monotonic() + timeout_s
    parts = urlparse(url)
    host = (parts.hostname or "").lower()
    if host not in {h.lower() for h in settings.allowed_image_hosts}:
        raise WorkerError("the image host is not allowed (DASH_ALLOWED_IMAGE_HOSTS)")
    try:
        pinned, host_header, _ = pinned_url(url, settings.allowed_image_networks)
    except PrivateAddress as exc:
        raise WorkerError(f"image host: {exc} (DASH_ALLOWED_IMAGE_NETWORKS)") from None
    limit = settings.max_image_bytes
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    try:
        with httpcore.ConnectionPool(network_backend=_DeadlineBackend(deadline), retries=0) as pool, \
                pool.stream("GET", pinned, headers=[(b"Host", host_header.encode())],
                            extensions={"sni_hostname": host, "timeout": timeouts}) as r:
            if r.status != 200:
                raise WorkerError(f"fetching the image gave HTTP {r.status}")
            chunks, size = [], 0
            for chunk in r.iter_stream():
                size += len(chunk)
                if size > limit:
                    raise WorkerError(f"image too large (over {limit} bytes)")
                if time.monotonic() > deadline:
                    raise WorkerError(f"fetching the image took over {timeout_s:g}s")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpcore.TimeoutException:
        raise WorkerError(f"fetching the image took over {timeout_s:g}s") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise WorkerError(f"cannot fetch the image: {type(exc).__name__}") from None


def _left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """The seconds an I/O step may wait: its own timeout, cut to what is left until `deadline`."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("the deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by `deadline` (time.monotonic)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _left(self.deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _left(self.deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, _left(self.deadline, timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking sockets, each connection ending by `deadline` (time.monotonic)."""

    def __init__(self, deadline: float) -> None:
        self.inner = httpcore.SyncBackend()
        self.deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(host, port, _left(self.deadline, timeout, httpcore.ConnectTimeout),
                                        local_address, socket_options)
        return _DeadlineStream(stream, self.deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("no Unix sockets here")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def load_image(url: str, settings: Settings, uploads: Callable[[str], bytes] | None = None) -> Any:
    """A decoded RGB PIL image, after checking its type and pixel count from the header."""
    from PIL import Image

    data = fetch_bytes(url, settings, uploads)
    try:
        img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)  # no other decoder is tried
    except Exception:
        raise WorkerError(f"not an image ({IMAGE_FORMATS_TEXT})") from None
    if img.format not in PIL_FORMATS:
        raise WorkerError(f"unsupported image type {img.format}")
    w, h = img.size
    if w * h > settings.max_image_pixels:
        raise WorkerError(f"image too large: {w}x{h} is over {settings.max_image_pixels} pixels")
    if w < 8 or h < 8:
        raise WorkerError(f"image too small: {w}x{h}")
    try:
        return img.convert("RGB")
    except Exception:
        raise WorkerError("the image could not be decoded") from None


def png_bytes(img: Any) -> bytes:
    """An image as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
