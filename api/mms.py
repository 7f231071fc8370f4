"""/v1/mms: picture messages to one or many US/Canadian numbers, and /v1/media uploads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from api.broadcasts import ACCEPTED, ACCEPTED_ERRORS, LOCATION, IdempotencyHeaders, accept
from api.errors import ApiError
from api.intake import (
    REJECTED_REASON,
    Plan,
    Priority,
    check_callback_url,
    check_send_at,
    check_sender,
    parse_request,
    plan_audience,
)
from api.media_check import MediaProblem, check_media
from api.openapi import describe
from shared.compliance import ALPHANUMERIC_RULE, in_us_or_canada, is_alphanumeric
from shared.config import Settings
from shared.media import EXTENSIONS, MAX_BYTES_EACH, MAX_MEDIA, base_type
from shared.plivo_client import PlivoError, client_for
from shared.urls import UnsafeUrl, check_url

bp = Blueprint("mms", __name__)

MMS_TEXT_MAX = 1600


class MmsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"recipients": ["+14155550101"], "media_ids": ["your-media-id"]}]
        },
    )

    recipients: list[Any] | None = Field(
        default=None, min_length=1, description="US and Canadian numbers (or `recipient`)"
    )
    recipient: Any = Field(default=None, description="One number (or `recipients`)")
    text: str | None = Field(default=None, description=f"Up to {MMS_TEXT_MAX} characters")
    media_urls: list[str] = Field(
        default_factory=list, description="Public https URLs; 1-10 with media_ids, 2 MB each"
    )
    media_ids: list[str] = Field(default_factory=list, description="From POST /v1/media")
    sender: str | None = Field(
        default=None,
        description="A phone number, short code or toll-free number (US and Canadian "
        "carriers drop alphanumeric senders); default PLIVO_SENDER",
    )
    skip_invalid: bool = Field(default=False, strict=True)  # true or false, not 0 or "yes"
    callback_url: str | None = None
    send_at: datetime | None = None
    priority: Priority = "normal"

    @model_validator(mode="after")
    def _one_audience(self) -> MmsRequest:
        if (self.recipients is None) == (self.recipient is None):
            raise ValueError("give either recipients (a list) or recipient (one number)")
        return self

    @property
    def numbers(self) -> list[Any]:
        return self.recipients if self.recipients is not None else [self.recipient]


def parse_mms(payload: Any, settings: Settings) -> MmsRequest:
    return parse_request(payload, settings, MmsRequest)


def check_mms_sender(sender: str | None, settings: Settings) -> str:
    """Every MMS goes to a US or Canadian number, where carriers drop alphanumeric senders:
    the configured numeric fallback stands in, as it does for SMS, or the request is
    refused."""
    chosen = check_sender(sender, settings)
    if not is_alphanumeric(chosen):
        return chosen
    if settings.numeric_fallback_sender:
        return settings.numeric_fallback_sender
    raise ApiError(400, "invalid_request", f"sender: {chosen} is alphanumeric; {ALPHANUMERIC_RULE}")


def check_media_fields(mms: MmsRequest, settings: Settings) -> dict:
    count = len(mms.media_urls) + len(mms.media_ids)
    if not 1 <= count <= MAX_MEDIA:
        raise ApiError(
            400,
            "invalid_request",
            f"media_urls, media_ids: {count} given; an MMS carries 1 to {MAX_MEDIA} together",
        )
    # Sandbox mode is local development: a local media server is fine there.
    sandbox = settings.sandbox_mode
    for index, url in enumerate(mms.media_urls):
        try:
            check_url(url, allow_http=settings.mms_allow_http, allow_internal=sandbox)
        except UnsafeUrl as error:
            raise ApiError(400, "invalid_request", f"media_urls.{index}: {url}: {error}") from None
    for index, media_id in enumerate(mms.media_ids):
        if not (isinstance(media_id, str) and 1 <= len(media_id) <= 64):
            raise ApiError(400, "invalid_request", f"media_ids.{index}: not a Plivo media id")
    if settings.effective_media_check and mms.media_urls:
        try:
            check_media(mms.media_urls, allow_internal=sandbox, allow_http=settings.mms_allow_http)
        except MediaProblem as problem:
            raise ApiError(400, "invalid_media", f"media_urls: {problem}") from None
    return {"media_urls": mms.media_urls, "media_ids": mms.media_ids}


def plan_mms(session: Session, mms: MmsRequest, settings: Settings) -> Plan:
    """All validation before anything is written, as for SMS."""
    sender = check_mms_sender(mms.sender, settings)
    text = mms.text if mms.text and mms.text.strip() else None
    if text is not None and len(text) > MMS_TEXT_MAX:
        raise ApiError(400, "invalid_request", f"text: over {MMS_TEXT_MAX} characters")
    callback_url = check_callback_url(mms.callback_url, settings)
    send_at = check_send_at(mms.send_at)
    media = check_media_fields(mms, settings)
    audience = plan_audience(
        session,
        mms.numbers,
        sender,
        mms.skip_invalid,
        settings,
        reachable=in_us_or_canada,
        why=REJECTED_REASON,
    )
    return Plan(
        sender=sender,
        text=text,
        encoding=None,
        segments=1,  # an MMS is billed as one message, whatever its length
        callback_url=callback_url,
        send_at=send_at,
        kind="mms",
        media=media,
        priority=mms.priority,
        **vars(audience),  # shallow: asdict would copy 100k numbers one by one
    )


@bp.post("/v1/mms")
@describe(
    "mms",
    ACCEPTED,
    ACCEPTED_ERRORS,
    body=MmsRequest,
    headers=IdempotencyHeaders,
    extra=LOCATION,
)
def create_mms():
    """Send a picture message to one or many US and Canadian numbers (202)

    The body is a broadcast of kind `mms`, as for SMS; it is paced at the MMS rate, on its
    own queue. Give exactly one of `recipients` and `recipient`."""
    return accept(parse_mms, plan_mms)


class MediaUpload(BaseModel):
    file: bytes = Field(description="An image, video or audio file Plivo sends, up to 2 MB")


class UploadedMedia(BaseModel):
    media_id: str = Field(description="For `media_ids` of POST /v1/mms")
    media_url: str | None
    content_type: str | None
    size: int | None


@bp.post("/v1/media")
@describe("mms", {201: UploadedMedia}, (400, 413, 502), form=MediaUpload)
def upload_media():
    """Upload a media file to Plivo's media store (multipart field `file`)

    Its media_id goes in `media_ids`, so media that is not public can be sent."""
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "invalid_request", "file: send the media as multipart field 'file'")
    content_type = base_type(upload.mimetype)
    if content_type not in EXTENSIONS:
        raise ApiError(400, "invalid_media", f"file: type {content_type} is not one Plivo sends")
    try:
        data = upload.read(MAX_BYTES_EACH + 1)
    finally:
        upload.close()  # a large upload is spooled to a temporary file
    if len(data) > MAX_BYTES_EACH:
        raise ApiError(400, "invalid_media", "file: over the 2 MB limit per media file")
    if not data:
        raise ApiError(400, "invalid_media", "file: empty")
    settings = current_app.config["SETTINGS"]
    filename = f"upload.{EXTENSIONS[content_type]}"
    try:
        response = client_for(settings).upload_media(filename, data, content_type)
    except PlivoError as error:
        raise ApiError(502, "plivo_error", f"Plivo refused the upload: {error}") from None
    return jsonify(response), 201
