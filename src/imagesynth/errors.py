"""The one exception tree of imagesynth. No HTTP in here: api/errors.py maps each class to a
status and a DashScope code. Each docstring is the default message the client sees."""

from __future__ import annotations

from enum import StrEnum


class ImageSynthError(Exception):
    """An internal error has occured, please try again later or contact service support."""

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """param: the request field at fault, where one is (the OpenAI error shape names
        it). retry_after: seconds after which a retry may succeed (a 429's Retry-After)."""
        super().__init__(message or (self.__doc__ or "").strip())
        self.param = param
        self.retry_after = retry_after

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidParameter(ImageSynthError):
    """Required parameter(s) missing or invalid, please check the request parameters."""


class EmptyModel(InvalidParameter):
    """Required parameter "model" missing from request."""


class EmptyInput(InvalidParameter):
    """Required parameter "input" missing from request."""


class UrlError(InvalidParameter):
    """url error, please check url!"""


class RequestTooLarge(InvalidParameter):
    """Request body is too large."""


class ModelNotFound(ImageSynthError):
    """Model can not be found."""


class MissingApiKey(ImageSynthError):
    """No API-key provided."""


class InvalidApiKey(ImageSynthError):
    """Invalid API-key provided."""


class AccessDenied(ImageSynthError):
    """Access denied."""


class UnsupportedOperation(ImageSynthError):
    """Failed to cancel the task, please confirm if the task is in PENDING status."""


class SignatureInvalid(ImageSynthError):
    """The request signature does not match, or the URL has expired."""


class ResourceNotFound(ImageSynthError):
    """The requested resource does not exist."""


class RouteNotFound(ImageSynthError):
    """The requested URL was not found on this server."""


class MethodNotAllowed(ImageSynthError):
    """The method is not allowed for the requested URL."""


class TaskFailed(ImageSynthError):
    """The task failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SyncTimeout(ImageSynthError):
    """The request timed out waiting for the image; the task was cancelled."""


class InvalidURL(ImageSynthError):
    """The URL is invalid or refers to an address the service will not fetch from."""


class FileDownloadFailed(ImageSynthError):
    """The input file could not be downloaded."""


class UnsupportedFileFormat(ImageSynthError):
    """The input file format is not supported: use JPG, JPEG, PNG, BMP, TIFF or WEBP."""


class InputTooLarge(ImageSynthError):
    """The input file is too large."""


class ObjectExists(ImageSynthError):
    """The object already exists and the upload forbids overwriting it."""


class StorageUnavailable(ImageSynthError):
    """The blob store (IMAGESYNTH_STORAGE_URL) is misconfigured or cannot be reached."""


class Throttled(ImageSynthError):
    """Requests throttling triggered."""


class RateQuotaExceeded(ImageSynthError):
    """Requests rate limit exceeded, please try again later."""


class AllocationQuotaExceeded(ImageSynthError):
    """Allocated quota exceeded, please increase your quota limit."""


class FreeTierOnly(ImageSynthError):
    """Free allocated quota exceeded."""


class DataInspectionFailed(ImageSynthError):
    """Input or output data may contain inappropriate content."""


class FailureCode(StrEnum):
    """The codes a task (or one image slot of it) can end with, as the task query shows them."""

    ALGO = "InternalError.Algo"  # the pipeline raised
    WORKER_LOST = "InternalError.WorkerLost"  # the task stopped its worker on every attempt
    DATA_INSPECTION = "DataInspectionFailed"  # the image classifier withheld the image(s)
    REMOTE_UNAVAILABLE = "InternalError.RemoteUnavailable"  # the remote engine never answered
    REMOTE_REJECTED = "InternalError.RemoteRejected"  # the remote engine refused the request
    REMOTE_BAD_REPLY = "InternalError.RemoteBadReply"  # its answer held no usable images

    @property
    def message(self) -> str:
        """What the task query says alongside the code."""
        return _FAILURE_MESSAGES[self]


_FAILURE_MESSAGES = {
    FailureCode.ALGO: "Image generation failed inside the model pipeline.",
    FailureCode.WORKER_LOST: "The task stopped its worker on every attempt.",
    FailureCode.DATA_INSPECTION: DataInspectionFailed().message,
    FailureCode.REMOTE_UNAVAILABLE: "The remote inference server could not be reached.",
    FailureCode.REMOTE_REJECTED: "The remote inference server refused the request.",
    FailureCode.REMOTE_BAD_REPLY: "The remote inference server's answer held no usable images.",
}
