"""Routing policies, by name. Each picks one backend out of candidates that are
routable and have room; none of them ever waits.

    round_robin        in turn
    least_outstanding  power of two choices on in-flight requests
    adapter_affinity   adapter requests go where the adapter is resident (in flight
                       there, or among the last `max_loras` it served), else to the
                       backend with the fewest adapters in flight (then in its slots);
                       base requests use least_outstanding. The default.
    prefix_affinity    rendezvous (consistent) hashing on the prompt's prefix, so
                       shared prefixes meet the same prefix cache

Affinity is bounded: a backend already carrying more than `load_factor` times the
mean in-flight load (rounded up) is passed over, so one hot adapter or prefix cannot
melt one replica.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.balancer.backend import Backend
from gateway.settings import PolicyName


@dataclass(frozen=True, slots=True)
class RouteKey:
    """What a policy may look at: the adapter name and the start of the prompt."""

    adapter: str | None = None
    prefix: str = ""


class Policy(Protocol):
    def choose(self, candidates: Sequence[Backend], key: RouteKey) -> Backend: ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Backend], key: RouteKey) -> Backend:
        return candidates[next(self._turn) % len(candidates)]


class LeastOutstanding:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Backend], key: RouteKey) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if a.in_flight <= b.in_flight else b


def load_bound(candidates: Sequence[Backend], load_factor: float) -> int:
    """The most in-flight requests one backend may hold before affinity gives way."""
    total = sum(b.in_flight for b in candidates) + 1
    return math.ceil(load_factor * total / len(candidates))


class AdapterAffinity:
    def __init__(self, load_factor: float = 1.25) -> None:
        self.load_factor = load_factor
        self._base = LeastOutstanding()

    def choose(self, candidates: Sequence[Backend], key: RouteKey) -> Backend:
        adapter = key.adapter
        if adapter is None or len(candidates) == 1:
            return self._base.choose(candidates, key)
        bound = load_bound(candidates, self.load_factor)
        within = [b for b in candidates if b.in_flight < bound] or list(candidates)
        for resident in (
            [b for b in within if b.by_adapter[adapter] > 0],
            [b for b in within if adapter in b.recent],
        ):
            if resident:
                return min(resident, key=lambda b: b.in_flight)
        # Cold: where the fewest adapters run, then hold slots, then least load.
        return min(within, key=lambda b: (len(b.by_adapter), len(b.recent), b.in_flight))


class PrefixAffinity:
    def __init__(self, load_factor: float = 1.25) -> None:
        self.load_factor = load_factor
        self._base = LeastOutstanding()

    def choose(self, candidates: Sequence[Backend], key: RouteKey) -> Backend:
        if not key.prefix or len(candidates) == 1:
            return self._base.choose(candidates, key)
        bound = load_bound(candidates, self.load_factor)
        ranked = sorted(candidates, key=lambda b: _score(key.prefix, b.name), reverse=True)
        return next((b for b in ranked if b.in_flight < bound), ranked[0])  # one always is


def _score(key: str, backend: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{backend}".encode(), digest_size=8).digest()


def make_policy(name: PolicyName, load_factor: float) -> Policy:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding()
    if name == "adapter_affinity":
        return AdapterAffinity(load_factor)
    return PrefixAffinity(load_factor)
