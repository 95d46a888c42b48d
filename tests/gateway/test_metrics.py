"""Metrics recorded in bulk read the same as one observation at a time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from gateway.metrics import observe_all

BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
gaps = st.lists(st.one_of(st.sampled_from(BOUNDS), st.floats(0, 5, allow_nan=False)), max_size=200)


def _samples(histogram: Histogram) -> dict[str, float]:
    (metric,) = histogram.collect()
    return {f"{s.name}{sorted(s.labels.items())}": s.value for s in metric.samples
            if not s.name.endswith("_created")}  # fmt: skip


@given(gaps, gaps)
def test_observe_all_reads_as_each_value_observed(first: list[float], then: list[float]) -> None:
    """Buckets and count exactly, the sum to rounding, whatever the values (on a
    bound, between bounds, past the last), over two rounds into the same child."""
    one = Histogram("one", "", ["model"], buckets=BOUNDS, registry=CollectorRegistry())
    bulk = Histogram("bulk", "", ["model"], buckets=BOUNDS, registry=CollectorRegistry())
    for values in (first, then):
        child = one.labels("m")
        for value in values:
            child.observe(value)
        observe_all(bulk.labels("m"), values)
    expected = {k.replace("one", "bulk", 1): v for k, v in _samples(one).items()}
    got = _samples(bulk)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if "_sum" in name:
            assert abs(got[name] - value) <= 1e-9 * max(1.0, abs(value))
        else:
            assert got[name] == value, name
