"""Errors an engine raises. The gateway maps each to an HTTP status at its boundary.

EngineError
├── InvalidGenerationRequest      the caller asked for something impossible (400)
│   ├── UnsupportedParameter      a valid OpenAI field this engine cannot honour
│   ├── UnsupportedEndpoint       an API this model or engine does not serve (chat to
│   │                             an embedding model, embeddings from TGI)
│   └── ContextLengthExceeded     prompt + max_tokens do not fit the context
├── EngineUnavailable             not started, shutting down, dead, timed out, 5xx (503;
│   │                             the balancer retries elsewhere and counts a failure)
│   ├── EngineUnreachable         could not connect at all (ejected at once)
│   ├── EngineDisconnected        the connection broke mid-request: the backend went
│   │                             away (ejected at once)
│   ├── EngineTimedOut            said nothing within a timeout (may be load: its
│   │                             retries draw on the pool's retry budget, as 429's)
│   ├── EngineOverloaded          the backend said 429 (retried elsewhere, not a failure)
│   └── AdapterMissing            the backend lost an adapter it was given (it restarted;
│                                 retried elsewhere, not a failure: the gateway restores it)
└── GenerationFailed              broke while generating (500 / error event)
"""

from __future__ import annotations


class EngineError(Exception):
    """`public`, where set, says the same as `message` without the backends' details
    (URLs, names, their own words): what callers who are not admins read."""

    public: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidGenerationRequest(EngineError):
    """`code` is OpenAI's error code where one applies (e.g. context_length_exceeded)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class UnsupportedParameter(InvalidGenerationRequest):
    def __init__(self, param: str, engine: str, hint: str = "") -> None:
        message = f"'{param}' is not supported by the {engine} engine serving this model."
        super().__init__(f"{message} {hint}".strip(), param, "unsupported_parameter")


class UnsupportedEndpoint(InvalidGenerationRequest):
    """`api` is the API's name as vLLM words it ("Embeddings API"); `why` says what the
    model or engine serves instead."""

    def __init__(self, model: str, api: str, why: str) -> None:
        super().__init__(
            f"The model '{model}' does not support the {api}: {why}.",
            param="model",
            code="unsupported_endpoint",
        )


class ContextLengthExceeded(InvalidGenerationRequest):
    def __init__(
        self, prompt_tokens: int, max_tokens: int | None, max_model_len: int, *, param: str
    ) -> None:
        asked = f" plus max_tokens {max_tokens}" if max_tokens else ""
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens{asked}. Shorten the messages or lower max_tokens.",
            param=param,
            code="context_length_exceeded",
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


class EngineUnavailable(EngineError):
    pass


class EngineUnreachable(EngineUnavailable):
    pass


class EngineDisconnected(EngineUnavailable):
    pass


class EngineTimedOut(EngineUnavailable):
    pass


class EngineOverloaded(EngineUnavailable):
    pass


class AdapterMissing(EngineUnavailable):
    pass


class GenerationFailed(EngineError):
    pass


def upstream_refusal(message: str, param: str | None = None) -> InvalidGenerationRequest:
    """A client error as a vLLM server words it, with OpenAI's code where it has one."""
    code = "context_length_exceeded" if "maximum context length" in message else None
    return InvalidGenerationRequest(message, param, code)
