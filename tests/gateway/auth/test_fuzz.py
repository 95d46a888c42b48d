"""Fuzzing: schemathesis generates requests from the gateway's own /openapi.json
(valid and invalid bodies, a bounded number per operation) against a live gateway
with auth on and the scripted engine. No answer is a 5xx, and every error is
OpenAI-shaped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings

from gateway.app import create_app
from gateway.auth.keys import digest
from gateway.settings import Settings
from tests.gateway.conftest import scripted
from tests.servers import serve, wait_until

KEY = "sy-fuzz-admin"
EXAMPLES = 150  # per operation


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    keys = [
        {
            "label": "fuzz",
            "key_sha256": digest(KEY),
            "models": ["*"],
            "admin": True,
            "max_tokens": 64,
        }
    ]
    app = create_app(Settings(auth={"keys": keys}), engines=[scripted()])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


def test_no_request_gets_a_5xx_and_errors_are_openai_shaped(live: str) -> None:
    schema = schemathesis.openapi.from_dict(httpx.get(live + "/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions"}
    headers = {"Authorization": f"Bearer {KEY}"}
    seen: list[int] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None)
        def check(case: Any) -> None:
            if case.method == "DELETE" and case.path == "/v1/adapters/{name}":
                case.path_parameters = {"name": "not-loaded"}  # unload nothing in use
            response = case.call(base_url=live, headers=headers, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, response.text
                assert isinstance(error["message"], str)
                assert error["message"]

        check()
    assert 200 in seen
    assert 400 in seen  # both valid and invalid bodies were generated
