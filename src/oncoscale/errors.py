"""The error hierarchy every part of oncoscale raises.

`OncoscaleError` is the base; catch it to handle anything the toolkit reports on purpose.
"""

from __future__ import annotations

from os import PathLike


class OncoscaleError(Exception):
    """Base of every error oncoscale raises on purpose."""


class InputError(OncoscaleError, ValueError):
    """Bad user input: a file, an array or an argument that is not what was expected.

    When the problem is in a file, ``path`` and (where known) ``line`` say where.
    """

    def __init__(self, message: str, *, path: str | PathLike[str] | None = None,
                 line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path + (f", line {line}" if line is not None else "") + ": "
        super().__init__(where + message)


class ConfigurationError(OncoscaleError, ValueError):
    """A setting or combination of settings that cannot work (e.g. world size != P x R)."""


class CommunicationError(OncoscaleError, RuntimeError):
    """A collective failed, timed out, or a peer rank died."""
