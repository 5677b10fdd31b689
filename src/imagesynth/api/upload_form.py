"""The upload host's multipart form, parsed as it streams in, in memory and capped.

Starlette's `request.form()` spools a file part to a temporary file before the route sees a
single field, so an upload with no valid policy could still write its whole body to disk.
Here the form is parsed chunk by chunk (python-multipart's streaming parser): the text fields
come first, as the SDK sends them (requests writes `data` before `files`, and OSS wants the file
last), and `on_fields` (which checks the policy) runs before the first byte of the file is
kept, then again once the form is complete. The file is held in memory, never beyond its cap:
nothing of an upload reaches the disk before it is authorised and complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from imagesynth.errors import InputTooLarge, InvalidParameter

MAX_FIELDS = 20
MAX_FIELD_BYTES = 16 * 1024  # a policy is a few hundred bytes, a signature 64


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


@dataclass
class UploadForm:
    """What was posted: the text fields, and the one file part."""

    fields: dict[str, str]
    file: bytes


class UploadFormParser:
    """Feed it the body's chunks; `on_fields(fields)` answers the file's size cap (raising to
    refuse the upload) once the fields before the file are in, before any file byte is kept."""

    def __init__(
        self, content_type: str | None, on_fields: Callable[[dict[str, str]], int]
    ) -> None:
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidParameter("The upload must be multipart/form-data.")
        self._on_fields = on_fields
        self._fields: dict[str, str] = {}
        self._file: bytes | None = None
        self._file_cap = 0
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._parts = 0
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidParameter(f"Malformed upload form: {exc}") from None

    def finish(self) -> UploadForm:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidParameter(f"Malformed upload form: {exc}") from None
        if not self._ended:
            raise InvalidParameter("Malformed upload form: it ends before its last boundary.")
        if self._file is None:
            raise InvalidParameter("The upload form has no file.")
        return UploadForm(dict(self._fields), self._file)

    # -- parser callbacks -----------------------------------------------------------------

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FIELDS:
            raise InvalidParameter(f"The upload form has more than {MAX_FIELDS} parts.")
        if self._file is not None:
            raise InvalidParameter("The file must be the upload form's last field.")
        self._part = _Part()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._part.headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        if kind != b"form-data" or b"name" not in options:
            raise InvalidParameter("Malformed upload form: a part without a form-data name.")
        part = self._part
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")
            if part.name != "file":
                raise InvalidParameter("The upload form's only file must be named file.")
            # Everything the policy check needs came before the file: check it now.
            self._file_cap = self._on_fields(dict(self._fields))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.data += data[start:end]
        if part.filename is None:
            if len(part.data) > MAX_FIELD_BYTES:
                raise InvalidParameter(f"The upload form's field {part.name} is too long.")
        elif len(part.data) > self._file_cap:
            raise InputTooLarge(f"Uploads are at most {self._file_cap // (1024 * 1024)} MB.")

    def _part_end(self) -> None:
        part = self._part
        if part.filename is not None:
            self._file = bytes(part.data)
        elif part.name == "file":
            raise InvalidParameter("The upload form's file part has no filename.")
        else:
            try:
                self._fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParameter(
                    f"The upload form's field {part.name} is not UTF-8."
                ) from None
        self._part = _Part()

    def _end(self) -> None:
        self._ended = True
