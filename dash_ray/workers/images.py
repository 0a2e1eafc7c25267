"""Input images: http(s) from allowed hosts, file:// under allowed folders, or data: URLs; checked."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from dash_ray.config import Settings
from dash_ray.errors import WorkerError

__all__ = ["fetch_bytes", "load_image", "png_bytes"]

_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF"}


def fetch_bytes(url: str, settings: Settings) -> bytes:
    """The bytes behind an image URL, within DASH_MAX_IMAGE_BYTES; WorkerError with the reason."""
    limit = settings.max_image_bytes
    scheme = url.split(":", 1)[0].lower()
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
        path = Path(unquote(urlparse(url).path)).resolve()
        allowed = [Path(d).resolve() for d in settings.allowed_file_dirs]
        if not any(path == d or d in path.parents for d in allowed):
            raise WorkerError("file:// URL outside the allowed folders (DASH_ALLOWED_FILE_DIRS)")
        try:
            if os.path.getsize(path) > limit:
                raise WorkerError(f"image too large (over {limit} bytes)")
            return path.read_bytes()
        except OSError as exc:
            raise WorkerError(f"cannot read {path.name}: {exc.strerror}") from None
    if scheme in ("http", "https"):
        host = (urlparse(url).hostname or "").lower()
        if host not in {h.lower() for h in settings.allowed_image_hosts}:
            raise WorkerError(f"host {host!r} is not allowed (DASH_ALLOWED_IMAGE_HOSTS)")
        import httpx

        try:
            with httpx.stream("GET", url, timeout=30, follow_redirects=False) as r:
                if r.status_code != 200:
                    raise WorkerError(f"fetching the image gave HTTP {r.status_code}")
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise WorkerError(f"image too large (over {limit} bytes)")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise WorkerError(f"cannot fetch the image: {type(exc).__name__}") from None
    raise WorkerError("image URL must be http(s), file:// or data:")


def load_image(url: str, settings: Settings) -> Any:
    """A decoded RGB PIL image, after checking its type and pixel count from the header."""
    from PIL import Image

    data = fetch_bytes(url, settings)
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:
        raise WorkerError("not an image (PNG, JPEG, WebP, BMP or GIF)") from None
    if img.format not in _FORMATS:
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
