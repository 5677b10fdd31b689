"""The OpenAI front's errors: `{"error": {"message", "type", "param", "code"}}` under OpenAI's
statuses, for every refusal of a request under /v1/ (api/errors.py sends them here).

The same domain errors as on the DashScope routes, told in OpenAI's words: the SDK raises
AuthenticationError for 401, BadRequestError for 400 (code `moderation_blocked` for a blocked
prompt or image), RateLimitError for 429 (after its own retries, which follow Retry-After).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

PREFIX = "/v1/"

# DashScope code -> (OpenAI type, OpenAI code). A code not listed takes its status's default.
_CODES: dict[str, tuple[str, str | None]] = {
    "InvalidApiKey": ("invalid_request_error", "invalid_api_key"),
    "DataInspectionFailed": ("image_generation_user_error", "moderation_blocked"),
    "ModelNotFound": ("invalid_request_error", "model_not_found"),
    "Throttling": ("requests", "rate_limit_exceeded"),
    "Throttling.RateQuota": ("requests", "rate_limit_exceeded"),
    "Throttling.AllocationQuota": ("requests", "rate_limit_exceeded"),
    "AllocationQuota.FreeTierOnly": ("insufficient_quota", "insufficient_quota"),
    "BadRequest.TooLarge": ("invalid_request_error", "request_too_large"),
    "NotFound": ("invalid_request_error", "not_found"),
    "RequestTimeOut": ("server_error", "timeout"),
}
_BY_STATUS = {
    400: ("invalid_request_error", "invalid_value"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
# Request fields a validation message may start with ("size must be ..."): its param.
PARAMS = (
    "prompt",
    "model",
    "n",
    "size",
    "seed",
    "steps",
    "guidance",
    "negative_prompt",
    "quality",
    "response_format",
    "output_format",
    "output_compression",
    "partial_images",
    "background",
    "user",
    "style",
    "stream",
    "moderation",
    "callback_url",
)


def serves(request: Request) -> bool:
    return request.url.path.startswith(PREFIX)


def error_body(status: int, code: str, message: str, param: str | None) -> dict[str, object]:
    kind, openai_code = _CODES.get(code) or _BY_STATUS.get(status) or ("server_error", None)
    if param is None and kind == "invalid_request_error" and openai_code == "invalid_value":
        param = _param_named_in(message)
    return {"error": {"message": message, "type": kind, "param": param, "code": openai_code}}


def error_response(
    status: int, code: str, message: str, param: str | None, headers: dict[str, str]
) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, param), status, headers=headers)


def _param_named_in(message: str) -> str | None:
    first = message.split(" ", 1)[0].rstrip(":")
    if first == "Field" and "input.prompt" in message:  # "Field required: input.prompt"
        return "prompt"
    return first if first in PARAMS else None
