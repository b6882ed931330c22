"""LightningCLI's parser with one-line refusals: the option's full key and why its value was refused (exit 2)."""

from __future__ import annotations

import re
import sys

from lightning.pytorch.cli import LightningArgumentParser

_KEY = re.compile(r'Parser key "([^"]+)"')
_LITERAL = re.compile(r"Expected a typing\.Literal\[(?P<allowed>.*)\]\. Got value: (?P<got>.*)")
_RESTRICTED = re.compile(r"Not of type \w+: (?:(?P<got>\S+) )?does not conform to restriction (?P<rule>.*)")
_UNKNOWN = re.compile(r"Option '(?P<option>[^']+)' is not accepted")


def one_line(message: str) -> str:
    """jsonargparse's nested message as one line: the option's full key and why its value was refused."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.splitlines() if line.strip()]
    key = ".".join(dict.fromkeys(k for line in lines for found in _KEY.findall(line) for k in found.split(".")))
    last = max((i for i, line in enumerate(lines) if _KEY.search(line)), default=-1)
    tail = lines[last + 1:] or lines
    given = next((line.removeprefix("Given value:").strip() for line in tail if line.startswith("Given value:")), "")
    for line in tail:
        if match := _LITERAL.search(line):
            return f"{key}: must be one of {match['allowed']}, got {match['got']!r}"
        if match := _RESTRICTED.search(line):
            rule = match["rule"].replace("v", "value")
            return f"{key}: {match['got'] or given} is not allowed (must satisfy {rule})"
        if match := _UNKNOWN.search(line):
            return f"{key}.{match['option']}: no such option (`--{key}.help CLASS` lists them)"
    if tail[0].startswith("Does not validate against any of the Union subtypes"):
        subtypes = next((line.removeprefix("Subtypes:").strip() for line in tail if line.startswith("Subtypes:")), "?")
        return f"{key}: {given!r} is none of the accepted types ({subtypes})"
    return f"{key}: {tail[0]}" if key else tail[0]


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser, whose refusals are one ``error:`` line naming the option (exit 2)."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        if not self.exit_on_error:
            return super().error(message, ex)
        print(f"error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)
