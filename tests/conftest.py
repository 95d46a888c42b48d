from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from gateway import errors

pytest_plugins = ["tests.redis_server", "tests.replicas"]  # redis_server, lora_replicas

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def demo_model() -> Path:
    if not (DEMO_MODEL / "switchyard-artifact.json").is_file():
        pytest.fail(f"{DEMO_MODEL} is missing: run `make test`, which prepares it first.")
    return DEMO_MODEL


# What a caller who is not an admin must never read in an error (test_say_less.py
# drives each kind of failure on purpose, with the backends' own names and ports too).
FORBIDDEN = (
    "://",
    "127.0.0.1",
    "localhost",
    "Traceback",
    "[Errno",
    "aiohttp",
    "Server disconnected",
)


@pytest.fixture(autouse=True, scope="session")
def _errors_say_no_more_to_callers_who_are_not_admins() -> Iterator[None]:
    """Every server-side error that the session's in-process gateways produce, whoever
    caused it, is rendered once more as a non-admin key would read it; none may carry
    an upstream URL, address or exception text."""
    seen: list[tuple[errors.GatewayError, str | None]] = []

    def recording(
        error: errors.GatewayError, request_id: str | None, admin: bool
    ) -> errors.GatewayError:
        if error.internal:
            seen.append((error, request_id))
        return errors.for_caller(error, request_id, admin)

    with (
        mock.patch("gateway.app.for_caller", recording),
        mock.patch("gateway.routes._respond.for_caller", recording),
    ):
        yield
    with mock.patch.object(errors.log, "disabled", True):  # logged once already
        told = [errors.for_caller(e, rid, admin=False).message for e, rid in seen]
    leaks = [m for m in told if any(word in m for word in FORBIDDEN)]
    assert not leaks, f"{len(leaks)} of {len(told)} internal errors say too much: {leaks[:5]}"
