"""Images, defined once: the formats accepted everywhere (uploads, payload inputs, the client's
inline images), how their bytes are recognised, and the URL schemes an image reference may use.

The gateway sniffs uploads with `sniff_image` and reads their header with Pillow limited to
`PIL_FORMATS`; workers decode inputs with the same list; the client labels inline images with
`sniff_image`; payloads validate references against `IMAGE_URL_SCHEMES`.
"""

from __future__ import annotations

import re

__all__ = ["IMAGE_FORMATS", "IMAGE_FORMATS_TEXT", "IMAGE_URL_SCHEMES", "PIL_FORMATS", "artifact_ref", "is_image_url",
           "job_ref", "sniff_image"]

# Pillow format name -> content type, in the order messages name them.
IMAGE_FORMATS: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "GIF": "image/gif",
}
PIL_FORMATS: tuple[str, ...] = tuple(IMAGE_FORMATS)
IMAGE_FORMATS_TEXT = "PNG, JPEG, WebP, BMP or GIF"  # for messages

# What a payload's image reference may be: a stored upload, a URL the worker fetches (checked
# against DASH_ALLOWED_IMAGE_HOSTS / DASH_ALLOWED_FILE_DIRS), the image itself as data:, or an
# image another job of the owner's made (`job://<id>/images/<n>`, resolved when the job is handed
# to its worker: to `artifact://<path>`, the result file, which only the dispatcher writes).
IMAGE_URL_SCHEMES: tuple[str, ...] = ("http", "https", "file", "data", "upload", "job", "artifact")

_JOB_REF = re.compile(r"^job://([A-Za-z0-9][A-Za-z0-9_.:@\-]{0,199})/images/(\d{1,2})$")
_ARTIFACT_REF = re.compile(r"^artifact://([A-Za-z0-9][A-Za-z0-9_.@\-]{0,199}(?:/[A-Za-z0-9][A-Za-z0-9_.@\-]{0,199}){2})$")


def job_ref(url: str) -> tuple[str, int] | None:
    """(job id, image index) of a `job://<id>/images/<n>` reference, else None."""
    m = _JOB_REF.match(url)
    return (m.group(1), int(m.group(2))) if m else None


def artifact_ref(url: str) -> str | None:
    """The result file path (`user/job/name`) of an `artifact://` reference, else None."""
    m = _ARTIFACT_REF.match(url)
    return m.group(1) if m else None

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def sniff_image(data: bytes) -> str | None:
    """The content type of image bytes of one of the accepted formats (from their first 16
    bytes), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def is_image_url(value: object) -> bool:
    """Whether a value is an image reference by its scheme (not validated further)."""
    return isinstance(value, str) and ":" in value and value.split(":", 1)[0].lower() in IMAGE_URL_SCHEMES
