"""MMS media rules (PLIVO.md): which types Plivo takes, and the size limits."""

from __future__ import annotations

MAX_MEDIA = 10
MAX_BYTES_EACH = 2 * 1024 * 1024
MAX_BYTES_TOTAL = 5 * 1024 * 1024  # exclusive: Plivo fails "5 MB or more" with error 120

# The content types Plivo lists for MMS and media uploads.
ALLOWED_TYPES = frozenset(
    {
        "image/jpeg",
        "image/jpg",
        "image/png",
        "image/gif",
        "audio/mp3",
        "audio/mpeg",
        "audio/wav",
        "audio/ogg",
        "video/mp4",
        "video/3gpp",
        "video/3gpp2",
        "text/vcard",
        "text/x-vcard",
        "text/csv",
        "text/plain",
        "application/pdf",
    }
)

# File extensions the SDK's media upload accepts, by content type.
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "audio/mp3": "mp3",
    "audio/mpeg": "mpeg",
    "audio/wav": "wav",
    "audio/ogg": "ogg",
    "video/mp4": "mp4",
    "video/3gpp": "3gpp",
    "video/3gpp2": "3gpp2",
    "text/vcard": "vcard",
    "text/x-vcard": "vcard",
    "text/csv": "csv",
    "text/plain": "plain",
    "application/pdf": "pdf",
}


def base_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()
