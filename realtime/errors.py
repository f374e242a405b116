"""The realtime room's errors: few and named. Each maps to one HTTP status and one websocket error code,
so a client can tell a bad request from a full server without parsing the message."""
from __future__ import annotations


class RealtimeError(Exception):
    """Base class of every error the realtime server reports to a client."""

    status = 400  # HTTP status
    code = "bad_request"  # websocket `error.code` and the JSON body's "error"


class BadOffer(RealtimeError):
    """An SDP offer that cannot be parsed or answered (aiortc raises many exception types; all land here)."""

    code = "bad_offer"


class BadMessage(RealtimeError):
    """A websocket message that is not valid JSON, has an unknown type or a missing/invalid field."""

    code = "bad_message"


class BadAudio(RealtimeError):
    """Audio that cannot be used: odd byte count, shorter than 10 ms, unsupported rate, too much buffered."""

    code = "bad_audio"


class BadPortrait(RealtimeError):
    """A portrait name that is not known, or an upload that is not a usable image."""

    code = "bad_portrait"


class TooLarge(RealtimeError):
    """A request body over its byte limit."""

    status = 413
    code = "too_large"


class WrongContentType(RealtimeError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(RealtimeError):
    status = 401
    code = "unauthorized"


class Forbidden(RealtimeError):
    """The websocket's Origin is not on the allowed list."""

    status = 403
    code = "forbidden"


class NotFound(RealtimeError):
    status = 404
    code = "not_found"


class SessionLimit(RealtimeError):
    """Every session slot is taken; the client should retry later (HTTP 503 + Retry-After, ws close 1013)."""

    status = 503
    code = "session_limit"
