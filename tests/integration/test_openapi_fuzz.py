"""Schema-based fuzzing of the documented OpenAPI of the real app (issue 10): schemathesis
generates requests for all 28 operations, valid and invalid by the schema; none may get a
5xx, and every error must be the DashScope shape the document promises. On SQLite and on
PostgreSQL, bounded in examples so the whole run takes a few seconds."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.integration.live_app import ADMIN_TOKEN, LiveApp, live_app_on

# Per operation, mode (schema-valid, schema-invalid) and database: 28 x 2 x 8 requests per
# database, a few seconds. Set IMAGESYNTH_TEST_FUZZ_EXAMPLES for a deeper run (150: ~1 min).
EXAMPLES = int(os.environ.get("IMAGESYNTH_TEST_FUZZ_EXAMPLES", "8"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApp]:
    with live_app_on(request.param, tmp_path_factory.mktemp("fuzz-home")) as app:
        yield app


def test_the_document_covers_every_operation(served: LiveApp) -> None:
    import httpx

    doc = httpx.get(f"{served.url}/openapi.json").json()
    operations = [(m, p) for p, ops in doc["paths"].items() for m in ops]
    assert len(operations) == 28
    for method, path in operations:
        op = doc["paths"][path][method]
        if method in ("post", "patch") and not path.endswith(("/cancel", "/revoke")):
            assert "requestBody" in op, (method, path)
        assert "4XX" in op["responses"], (method, path)


def _fuzz(served: LiveApp, operation: APIOperation, mode: GenerationMode) -> int:
    """Run one operation's examples in one mode; how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        token = ADMIN_TOKEN if case.path.startswith("/admin") else served.key
        response = case.call(
            base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        where = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, (where, response.text[:300])
        content_type = response.headers.get("content-type") or [""]  # a list of values
        streamed = str(content_type[0]).startswith("text/event-stream")
        if response.status_code >= 400:
            text = response.text
            if streamed:  # an error to a call that asked for a stream: one error frame
                assert "\nevent:error\n" in text, (where, text[:300])
                # The frame's data line (a message may quote "data:" itself, e.g. a URL).
                text = next(ln for ln in text.splitlines() if ln.startswith("data:"))[5:]
            body = json.loads(text)
            if case.path.startswith("/v1/"):  # the OpenAI front answers in OpenAI's shape
                assert set(body) == {"error"}, (where, body)
                assert {"message", "type", "param", "code"} == set(body["error"]), (where, body)
            else:
                assert set(body) == {"request_id", "code", "message"}, (where, body)
        if streamed:
            return  # the documented schemas are the JSON answers
        case.validate_response(
            response, checks=[content_type_conformance, response_schema_conformance]
        )

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid (no parameters, no body): the positive run covered it.
        assert mode == GenerationMode.NEGATIVE, operation.label
    return sent


def test_no_server_errors_and_errors_in_shape(served: LiveApp) -> None:
    """Schema-valid and schema-invalid requests for every operation."""
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    sent = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 28
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            started = time.monotonic()
            count = _fuzz(served, operation, mode)
            print(f"{operation.label} {mode.value}: {count} in {time.monotonic() - started:.2f}s")
            sent += count
    assert sent >= 28 * EXAMPLES
