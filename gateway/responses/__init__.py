"""OpenAI's Responses API over the chat pipeline, with a response store the gateway owns."""
