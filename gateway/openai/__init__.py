"""The only place that knows OpenAI's JSON shapes."""
