"""Cache keys: which answers may be shared, and under what identity.

A key covers everything that changes the output: the resolved base model and its
artifact id, the adapter's name and content digest (a reloaded adapter with new
weights under the same name gets new keys), the endpoint, the normalized requests
(prompt or messages, every sampling parameter, stop, n, logprobs, and every
option: tools, tool_choice, response_format, structured outputs, vLLM's extras) and the caller's
scope (the API key's label: one key never reads another's answers). Request ids never enter a key.
`FORMAT` prefixes every key, so a change of the stored format never reads old entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from engines.types import GenerationRequest

FORMAT = "sy3"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who answers: the base model (and artifact), and the adapter version."""

    base: str
    artifact: str | None = None
    adapter: str | None = None
    adapter_digest: str | None = None


def deterministic(requests: Sequence[GenerationRequest]) -> bool:
    """Greedy decoding, or sampling with a seed: the same request, the same answer."""
    return all(r.temperature == 0 or r.seed is not None for r in requests)


def cache_key(
    identity: Identity, endpoint: str, requests: Sequence[GenerationRequest], scope: str = ""
) -> str:
    parts = {
        "identity": dataclasses.asdict(identity),
        "endpoint": endpoint,
        "scope": scope,
        "requests": [_normalized(r) for r in requests],
    }
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{FORMAT}:{digest}"


def _normalized(request: GenerationRequest) -> dict[str, object]:
    fields = dataclasses.asdict(request)
    del fields["request_id"]
    del fields["adapter"]  # in the identity, by digest
    if "prompt_logprobs" not in request.options:
        del fields["incremental"]  # streamed or not, the same answer (prompt logprobs
        # come with whole answers only)
    if request.temperature == 0:
        fields["top_p"] = 1.0  # ignored when greedy
        fields["seed"] = None
    return fields
