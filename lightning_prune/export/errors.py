"""The export's own error type, a ``ConfigError`` so every CLI prints it as one line and exits 2."""

from __future__ import annotations

from lightning_prune.errors import ConfigError


class ExportError(ConfigError):
    """An artifact that cannot be written or does not reproduce its source model; the message says which."""
