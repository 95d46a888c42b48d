"""HTTP routes: parse the OpenAI body, hand plain data to the pipeline."""
