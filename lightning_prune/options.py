"""Typed option values: LightningCLI checks them while parsing, so a bad value is one line naming the option.

Only what a type cannot say (one of several options set, ascending lists, layer names, a reachable
target) is checked by the callbacks, once, in ``setup``.
"""

from __future__ import annotations

from jsonargparse.typing import (
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

Sparsity = restricted_number_type("Sparsity", float, [(">=", 0), ("<", 1)],
                                  docstring="a fraction of weights removed, in [0, 1)")
KeepRatio = OpenUnitInterval  # a fraction of channels kept, in (0, 1)
Percent = restricted_number_type("Percent", float, [(">=", 0), ("<=", 100)], docstring="a percentage in [0, 100]")

__all__ = ["KeepRatio", "NonNegativeFloat", "NonNegativeInt", "Percent", "PositiveFloat", "PositiveInt", "Sparsity"]


def plain(value):
    """The value with typed numbers (``Sparsity(0.9)``) as plain ``float``/``int``, lists and dicts alike.

    Checkpoints store option values, and ``torch.load(weights_only=True)`` accepts builtin types only.
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
