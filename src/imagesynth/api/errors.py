"""Domain errors -> HTTP status and DashScope code, and the handlers that answer every failure
with the DashScope error shape {request_id, code, message}."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagesynth import errors
from imagesynth.api import openai_errors, sse
from imagesynth.api.context import request_id_of, services_of

log = logging.getLogger(__name__)

# Each domain error class -> (status, DashScope code). A class not listed takes its nearest
# listed base class's entry (status_and_code walks the MRO), so a subclass is answered as the
# most specific class that names it, whatever the order here.
ERRORS: dict[type[errors.ImageSynthError], tuple[int, str]] = {
    errors.EmptyModel: (400, "BadRequest.EmptyModel"),
    errors.EmptyInput: (400, "BadRequest.EmptyInput"),
    errors.RequestTooLarge: (413, "BadRequest.TooLarge"),
    errors.InvalidParameter: (400, "InvalidParameter"),
    errors.DataInspectionFailed: (400, "DataInspectionFailed"),
    errors.ModelNotFound: (404, "ModelNotFound"),
    errors.MissingApiKey: (401, "InvalidApiKey"),
    errors.InvalidApiKey: (401, "InvalidApiKey"),
    errors.AccessDenied: (403, "AccessDenied"),
    errors.SignatureInvalid: (403, "AccessDenied"),
    errors.UnsupportedOperation: (400, "UnsupportedOperation"),
    errors.ResourceNotFound: (404, "NotFound"),
    errors.RouteNotFound: (404, "NotFound"),
    errors.MethodNotAllowed: (405, "MethodNotAllowed"),
    errors.SyncTimeout: (408, "RequestTimeOut"),
    errors.InvalidURL: (400, "InvalidURL"),
    errors.FileDownloadFailed: (400, "InvalidParameter.FileDownload"),
    errors.UnsupportedFileFormat: (400, "BadRequest.UnsupportedFileFormat"),
    errors.InputTooLarge: (413, "BadRequest.TooLarge"),
    errors.ObjectExists: (409, "FileAlreadyExists"),  # OSS's answer, on the upload host
    errors.Throttled: (429, "Throttling"),
    errors.RateQuotaExceeded: (429, "Throttling.RateQuota"),
    errors.AllocationQuotaExceeded: (429, "Throttling.AllocationQuota"),
    errors.FreeTierOnly: (403, "AllocationQuota.FreeTierOnly"),
}

# A failed task's own code, answered on a synchronous endpoint: the client's fault or ours.
_CLIENT_TASK_CODES = ("InvalidParameter", "DataInspectionFailed", "BadRequest")


def status_and_code(exc: errors.ImageSynthError) -> tuple[int, str]:
    if isinstance(exc, errors.TaskFailed):
        return (400 if exc.code.startswith(_CLIENT_TASK_CODES) else 500), exc.code
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return 500, "InternalError"


def answer_for(request_id: str, exc: errors.ImageSynthError) -> tuple[int, str, str]:
    """(status, code, message) the client gets for `exc`. Our own 5xx failures are logged
    and answered with a generic message; a failed task's code and message are its own."""
    status, code = status_and_code(exc)
    if status >= 500 and not isinstance(exc, errors.TaskFailed):
        log_failure(request_id, exc)
        return status, code, errors.ImageSynthError().message
    return status, code, exc.message


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    exc: errors.ImageSynthError | None = None,
) -> Response:
    # Every refusal passes here (domain errors, unrouted paths, bad bodies, unexpected ones).
    services_of(request).metrics.refused(code)
    headers = {}
    if status == 429 and exc is not None and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if openai_errors.serves(request):
        param = exc.param if exc is not None else None
        return openai_errors.error_response(status, code, message, param, headers)
    if sse.streams(request):
        return sse.error_stream(status, request_id_of(request), code, message)
    return JSONResponse(
        {"request_id": request_id_of(request), "code": code, "message": message},
        status_code=status,
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ImageSynthError)
    async def domain_error(request: Request, exc: errors.ImageSynthError) -> Response:
        return error_response(request, *answer_for(request_id_of(request), exc), exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):
            return await domain_error(request, unrouted(request, exc))
        return error_response(request, exc.status_code, "BadRequest", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "Invalid request."
        return await domain_error(request, errors.InvalidParameter(message))

    # Not an exception handler for Exception: Starlette gives that one to its outermost
    # ServerErrorMiddleware, which answers and then re-raises, so uvicorn closes the
    # connection and the client's next keep-alive request on it fails.
    app.add_middleware(AnswerUnexpectedErrors)


def unrouted(request: Request, exc: StarletteHTTPException) -> errors.ImageSynthError:
    """No route for this path (404) or method (405). Under /api/ DashScope's gateway answers
    both 400 InvalidParameter "url error, please check url!", and so do we; our own paths
    (/admin, /files) answer 404 NotFound and 405 MethodNotAllowed."""
    allowed = (exc.headers or {}).get("Allow", "")
    if request.url.path.startswith("/api/"):
        detail = f" {request.method} is not served here; use {allowed}." if allowed else ""
        return errors.UrlError(f"{errors.UrlError().message}{detail}")
    if exc.status_code == 405:
        return errors.MethodNotAllowed()
    return errors.RouteNotFound()


def log_failure(request_id: str, exc: BaseException) -> None:
    """One line per failed request; its traceback in the same record when logging at debug."""
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    log.error(
        "request %s failed: %s",
        request_id,
        summary if len(summary) <= 500 else summary[:500] + "...",
        exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
    )


class AnswerUnexpectedErrors:
    """Pure ASGI middleware: an exception that no handler maps is answered 500 InternalError in
    the DashScope shape and logged, and goes no further, so the connection stays usable."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            request = Request(scope)
            log_failure(request_id_of(request), exc)
            if started:
                raise  # part of a reply is out: only closing the connection can tell the client
            message = errors.ImageSynthError().message
            await error_response(request, 500, "InternalError", message)(scope, receive, send)
