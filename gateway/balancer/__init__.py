"""Pools of backends per model: routing policies, health, ejection, backpressure."""
