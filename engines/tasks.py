"""What a model serves (text generation or embeddings), and the 400 for asking a model
for what it does not serve, worded as vLLM's server words it ("The model does not
support the Embeddings API") with the model named."""

from __future__ import annotations

from collections.abc import Collection

from engines.errors import UnsupportedEndpoint
from engines.types import Task

GENERATE: frozenset[Task] = frozenset({"generate"})
EMBED: frozenset[Task] = frozenset({"embed"})

# The APIs by the gateway's endpoint names (metrics' `endpoint` label).
API_NAMES = {
    "chat": "Chat Completions API",
    "completions": "Completions API",
    "responses": "Responses API",
    "embeddings": "Embeddings API",
    "tokenize": "Tokenize API",
    "detokenize": "Detokenize API",
}
_SERVED = {
    "generate": "it generates text (POST /v1/chat/completions, /v1/completions)",
    "embed": "it is an embedding model (POST /v1/embeddings)",
}


def require(model: str, serves: Collection[Task], task: Task, endpoint: str) -> None:
    """Raise UnsupportedEndpoint (a 400 naming `model`) unless `task` is served."""
    if task in serves:
        return
    what = " and ".join(_SERVED[t] for t in sorted(serves)) or "it serves nothing"
    raise UnsupportedEndpoint(model, API_NAMES.get(endpoint, f"{endpoint} API"), what)
