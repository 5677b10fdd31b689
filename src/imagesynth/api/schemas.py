"""The DashScope wire format: request bodies in, reply bodies out. DashScope field names live
here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic import ValidationError as PydanticValidationError

from imagesynth.catalog import ModelSpec
from imagesynth.domain import MAX_PARTIAL_IMAGES, SEED_MAX, TaskStatus
from imagesynth.errors import EmptyInput, EmptyModel, InvalidParameter
from imagesynth.tasks.models import Task

UrlFor = Callable[[str], str]  # blob key -> absolute signed URL


_R = TypeVar("_R", bound="_Loose")
# Pydantic names the member of a union that failed at the end of an error's location.
_UNION_TAGS = {"float", "int", "str", "bool"}


class _Loose(BaseModel):
    # Unknown fields are ignored, as DashScope does; known ones are type-checked strictly
    # ("2" is not an int), so a wrong type is a clear 400 rather than a silent coercion.
    model_config = ConfigDict(extra="allow")


_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user"]},
        "content": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}},
            },
        },
    },
}


def _doc(description: str, **schema: Any) -> Any:
    """A field's OpenAPI description and bounds: documentation only (json_schema_extra), so
    parsing stays as it was and the catalog's checks give the message for a bad value."""
    return Field(None, json_schema_extra={"description": description, **schema})


class SynthesisInput(_Loose):
    model_config = ConfigDict(json_schema_extra={"required": ["prompt"]})

    prompt: StrictStr | None = _doc("What to draw; at most 800 characters are used.")
    negative_prompt: StrictStr | None = _doc("What to avoid; at most 500 characters are used.")
    ref_img: StrictStr | None = _doc("wanx-v1: reference image, http(s) or oss:// URL.")
    ref_image: StrictStr | None = None  # the V1 doc's curl examples spell it so

    @property
    def reference(self) -> str | None:
        return self.ref_img if self.ref_img is not None else self.ref_image


_NOT_GENERATION = frozenset({"callback_url"})


class SynthesisParameters(_Loose):
    size: StrictStr | None = _doc("W*H, per model (see the README).", pattern=r"^\d+\*\d+$")
    n: StrictInt | None = _doc("Images: 1..4 (Qwen-Image 1).", minimum=1, maximum=4)
    seed: StrictInt | None = _doc("Image i uses seed+i.", minimum=0, maximum=SEED_MAX)
    steps: StrictInt | None = _doc("Denoising steps, bounded per model.", minimum=1)
    guidance: StrictFloat | StrictInt | None = _doc("Guidance scale, bounded per model.")
    prompt_extend: StrictBool | None = _doc("Rewrite the prompt first (default true).")
    watermark: StrictBool | None = _doc("Draw a visible AI mark.")
    style: StrictStr | None = _doc("wanx-v1 only, e.g. <watercolor>.")
    ref_strength: StrictFloat | StrictInt | None = _doc("0..1.", minimum=0, maximum=1)
    ref_mode: StrictStr | None = _doc("repaint or refonly.", enum=["repaint", "refonly"])
    partial_images: StrictInt | None = _doc(
        "Beyond DashScope: previews made while denoising, read from the task's progress "
        "stream with ?previews=true.",
        minimum=0,
        maximum=MAX_PARTIAL_IMAGES,
    )
    callback_url: StrictStr | None = _doc(
        "Beyond DashScope: a URL sent the task's end, signed (docs/webhooks.md); the same as "
        "the X-ImageSynth-Callback-URL header."
    )

    def fields(self) -> dict[str, Any]:
        """As ModelSpec.validate names them (each declared field but the callback URL, which
        is not a generation parameter; extra ones are ignored)."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in _NOT_GENERATION
        }


def _validate(cls: type[_R], body: dict[str, Any]) -> _R:
    """Parse a request body, turning the first type error into an InvalidParameter that names
    the field, and a missing model into BadRequest.EmptyModel."""
    request = _validate_fields(cls, body)
    if not getattr(request, "model", None):
        raise EmptyModel()
    return request


def _validate_fields(cls: type[_R], body: dict[str, Any]) -> _R:
    """Parse a body, turning the first type error into an InvalidParameter naming the field."""
    try:
        request = cls.model_validate(body)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = [str(p) for p in first["loc"]]
        while where and where[-1] in _UNION_TAGS:  # "guidance.float" -> "guidance"
            where.pop()
        raise InvalidParameter(f"{'.'.join(where)}: {first['msg']}") from None
    return request


class SynthesisRequest(_Loose):
    model_config = ConfigDict(json_schema_extra={"required": ["model", "input"]})

    model: StrictStr | None = _doc("A model name, e.g. wanx-v1.")
    input: SynthesisInput | None = None
    parameters: SynthesisParameters | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SynthesisRequest:
        request = _validate(cls, body)
        if request.input is None:
            raise EmptyInput()
        return request

    def generation_fields(self) -> dict[str, Any]:
        """The fields ModelSpec.validate takes, named as the domain names them."""
        assert self.input is not None
        return {
            **(self.parameters or SynthesisParameters()).fields(),
            "prompt": self.input.prompt,
            "negative_prompt": self.input.negative_prompt,
            "has_reference": self.input.reference is not None,
        }

    @property
    def callback_url(self) -> str | None:
        return self.parameters.callback_url if self.parameters else None


class MultimodalParameters(SynthesisParameters):
    negative_prompt: StrictStr | None = None


class MultimodalInput(_Loose):
    model_config = ConfigDict(json_schema_extra={"required": ["messages"]})

    messages: list[Any] | None = Field(
        None,
        json_schema_extra={
            "description": "Exactly one user message holding one text.",
            "minItems": 1,
            "maxItems": 1,
            "items": _MESSAGE_SCHEMA,
        },
    )


class MultimodalRequest(_Loose):
    """The Qwen-Image synchronous body: exactly one user message with exactly one text."""

    model_config = ConfigDict(json_schema_extra={"required": ["model", "input"]})

    model: StrictStr | None = _doc("A Qwen-Image model name.")
    input: MultimodalInput | None = None
    parameters: MultimodalParameters | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> MultimodalRequest:
        request = _validate(cls, body)
        if request.input is None or request.input.messages is None:
            raise EmptyInput('Required parameter "input.messages" missing from request.')
        return request

    def prompt(self) -> str:
        assert self.input is not None and self.input.messages is not None
        messages = self.input.messages
        if len(messages) != 1 or not isinstance(messages[0], dict):
            raise InvalidParameter("input.messages must hold exactly one user message")
        message = messages[0]
        if message.get("role") != "user":
            raise InvalidParameter("input.messages[0].role must be 'user'")
        content = message.get("content")
        if (
            not isinstance(content, list)
            or len(content) != 1
            or not isinstance(content[0], dict)
            or set(content[0]) != {"text"}
            or not isinstance(content[0]["text"], str)
        ):
            raise InvalidParameter(
                'input.messages[0].content must hold exactly one item, {"text": prompt}'
            )
        return str(content[0]["text"])

    def generation_fields(self) -> dict[str, Any]:
        p = self.parameters or MultimodalParameters()
        return {**p.fields(), "prompt": self.prompt(), "negative_prompt": p.negative_prompt}

    @property
    def callback_url(self) -> str | None:
        return self.parameters.callback_url if self.parameters else None


def _stored_metrics(task: Task) -> dict[str, int]:
    """`task_metrics` of an ended task: its images stored, and the slots that failed."""
    stored = sum(1 for r in task.results if r.blob_key)
    return {"TOTAL": task.params.n, "SUCCEEDED": stored, "FAILED": task.params.n - stored}


def _choices(task: Task, url_for: UrlFor, typed: bool) -> list[dict[str, Any]]:
    """The images as one assistant message (the messages protocols' `output.choices`);
    `typed` adds wan2.6's `"type": "image"` to each item."""
    content: list[dict[str, Any]] = []
    for r in task.results:
        if r.blob_key:
            content.append({"image": url_for(r.blob_key), **({"type": "image"} if typed else {})})
    return [{"finish_reason": "stop", "message": {"role": "assistant", "content": content}}]


def _image_usage(task: Task, spec: ModelSpec | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"image_count": _stored_metrics(task)["SUCCEEDED"]}
    if spec is not None and spec.messages_protocol:
        # wan2.6 reports the size and (always zero) token counts too.
        usage.update(
            size=f"{task.params.width}*{task.params.height}",
            input_tokens=0,
            output_tokens=0,
            total_tokens=0,
        )
    return usage


def multimodal_reply(request_id: str, task: Task, spec: ModelSpec, url_for: UrlFor) -> dict:
    """A synchronous messages-protocol reply: Qwen-Image's (note `task_metric`, singular, as
    DashScope has it), plus `finished` and typed items for wan2.6's protocol."""
    output: dict[str, Any] = {
        "choices": _choices(task, url_for, typed=spec.messages_protocol),
        "task_metric": _stored_metrics(task),
    }
    if spec.messages_protocol:
        output["finished"] = True
    usage = {
        **_image_usage(task, spec),
        "width": task.params.width,
        "height": task.params.height,
    }
    return {"request_id": request_id, "output": output, "usage": usage}


def format_time(epoch: float | None) -> str | None:
    """DashScope's `YYYY-MM-DD HH:mm:ss.SSS`, local time, no zone suffix."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def epoch_ms(epoch: float | None) -> int | None:
    return None if epoch is None else int(epoch * 1000)


def task_output(task: Task, spec: ModelSpec | None, url_for: UrlFor) -> dict[str, Any]:
    """The `output` object of a task query."""
    out: dict[str, Any] = {"task_id": task.id, "task_status": str(task.status)}
    for name, value in (
        ("submit_time", format_time(task.created_at)),
        ("scheduled_time", format_time(task.started_at)),
        ("end_time", format_time(task.finished_at) if task.status.is_final else None),
    ):
        if value is not None:
            out[name] = value
    if task.prompt_note:
        # Beyond DashScope: why prompt_extend kept the prompt as given (timeout, a rewrite
        # that dropped quoted text, ...).
        out["prompt_extend_note"] = task.prompt_note
    total = task.params.n
    if task.status == TaskStatus.RUNNING:
        out["task_metrics"] = {"TOTAL": total, "SUCCEEDED": 0, "FAILED": 0}
        # Beyond DashScope: how far the denoising loop has got.
        out["task_progress"] = {"step": task.progress_step, "steps": task.progress_total}
        if spec is not None and spec.backend != "diffusers":
            # A remote engine tells no steps: the task says so rather than showing 0 forever.
            out["task_progress"]["reported"] = False
    elif task.status == TaskStatus.SUCCEEDED and spec is not None and spec.messages_protocol:
        # A wan2.6 task: its images as the protocol's one assistant message.
        out["finished"] = True
        out["choices"] = _choices(task, url_for, typed=True)
        out["task_metrics"] = _stored_metrics(task)
    elif task.status == TaskStatus.SUCCEEDED:
        with_prompts = spec is None or spec.result_prompts
        results: list[dict[str, Any]] = []
        for r in task.results:
            if r.blob_key is None:
                results.append({"code": r.code, "message": r.message})
                continue
            item: dict[str, Any] = {}
            if with_prompts:
                item["orig_prompt"] = task.params.prompt
                if task.params.prompt_extend:
                    item["actual_prompt"] = r.actual_prompt or task.params.prompt
            item["url"] = url_for(r.blob_key)
            results.append(item)
        out["results"] = results
        out["task_metrics"] = _stored_metrics(task)
    elif task.status == TaskStatus.FAILED:
        out["code"] = task.error_code or "InternalError"
        out["message"] = task.error_message or ""
        out["task_metrics"] = {"TOTAL": total, "SUCCEEDED": 0, "FAILED": total}
    return out


def task_reply(request_id: str, task: Task, spec: ModelSpec | None, url_for: UrlFor) -> dict:
    reply: dict[str, Any] = {
        "request_id": request_id,
        "output": task_output(task, spec, url_for),
    }
    if task.status.is_final:
        reply["usage"] = _image_usage(task, spec)
    return reply


def unknown_task_reply(request_id: str, task_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "output": {"task_id": task_id, "task_status": "UNKNOWN"}}


def list_item(task: Task, spec: ModelSpec | None, region: str) -> dict[str, Any]:
    service = (
        "image-generation:generation"
        if spec is not None and spec.messages_protocol
        else "text2image:image-synthesis"
    )
    item: dict[str, Any] = {
        "task_id": task.id,
        "request_id": task.request_id,
        "status": str(task.status),
        "model_name": task.model,
        "region": region,
        "api_key_id": task.api_key_id,
        "caller_uid": task.api_key_id,
        "caller_parent_id": task.api_key_id,
        "gmt_create": epoch_ms(task.created_at),
        "user_api_unique_key": f"apikey:v1:aigc:{service}:{task.model}",
    }
    if task.started_at is not None:
        item["start_time"] = epoch_ms(task.started_at)
    if task.status.is_final and task.finished_at is not None:
        item["end_time"] = epoch_ms(task.finished_at)
    if task.workspace:
        item["workspace"] = task.workspace
    return item


# -- Documentation only ------------------------------------------------------------------------
# The OpenAPI document (api/openapi.py) describes these bodies; the routes still parse them by
# hand (read_json_object, the models above, accounts/settings.py apply_changes), so the
# documented ranges are what those checks enforce, not a second validation.


class ErrorReply(BaseModel):
    """Every error: DashScope's shape."""

    request_id: str
    code: str = Field(examples=["InvalidParameter"])
    message: str


class KeyChange(BaseModel):
    """PATCH /admin/v1/keys/{ref}: absent fields stay as they are, null clears."""

    model_config = ConfigDict(extra="forbid")

    free_tier_only: bool | None = None
    monthly_cap: float | str | None = Field(
        None, description="Spending cap per month, 0..1000000000 in the catalog's currency."
    )
    max_pending: int | None = Field(None, ge=1, le=1_000_000)
    model: str | None = Field(None, description="rps / in_flight / free_quota for this model.")
    rps: float | None = Field(None, gt=0, le=10_000)
    in_flight: int | None = Field(None, ge=1, le=10_000)
    free_quota: int | None = Field(None, ge=0, le=1_000_000_000)


class KeyCreate(KeyChange):
    """POST /admin/v1/keys: a name, and any settings of PATCH."""

    name: str = Field(min_length=1, max_length=200)


class WebhookCreate(_Loose):
    """POST /admin/v1/keys/{ref}/webhooks: an endpoint told of the key's task ends."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["url"]})

    url: StrictStr | None = _doc("http(s) URL on a public address.")
    events: list[StrictStr] | None = _doc(
        "Only these events (default all): task.succeeded, task.failed, task.canceled."
    )

    @classmethod
    def parse(cls, body: dict[str, Any]) -> tuple[str, list[str] | None]:
        """(url, events) of the body."""
        request = _validate_fields(cls, body)
        if not request.url:
            raise InvalidParameter("url: a webhook endpoint needs a URL")
        return request.url, request.events
