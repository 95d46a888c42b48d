"""The response cache: which answers may be shared (keys.py), where they are stored
(memory.py, redis.py), what the pipeline asks of it (responses.py), and identical
requests in flight sharing one generation (flights.py)."""
