"""One exception type for bad user input: the CLI prints its message alone and exits 2."""


class ConfigError(ValueError):
    """A wrong option value or missing resource; the message names the option."""


class ExportError(ConfigError):
    """An artifact that cannot be written or does not reproduce its source model; the message says which."""
