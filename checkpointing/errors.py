"""The errors of the checkpoint system, and the exit code every CLI gives for bad input.

Each error names its culprit (a file, a key path, a value) so that a user can act on it:

- :class:`ConfigError`: a configuration file or value that cannot be used;
- :class:`CheckpointNameError`: a market, seed, run id, event or file name the grammar refuses;
- :class:`MetadataError`: a metadata file that is missing, unreadable or of an unknown schema;
- :class:`CheckpointCorruptError`: a checkpoint whose files do not match its metadata;
- :class:`RegistryError`: a path outside the registry root, or a bad query;
- :class:`ObjectStoreError`: an object-store location that cannot be used (no such bucket,
  an endpoint that refuses, credentials that are denied), found before anything is written.

This module imports nothing of the package, so every other module can import it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "EXIT_USAGE",
    "CheckpointCorruptError",
    "CheckpointNameError",
    "ConfigError",
    "MetadataError",
    "ObjectStoreError",
    "RegistryError",
    "usage_error",
]

# Exit code of every CLI for bad input (arguments, configs, paths).
EXIT_USAGE = 2


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the culprit."""


class CheckpointNameError(ValueError):
    """A market, seed, run id, event or file name that the grammar refuses."""


class MetadataError(ValueError):
    """A metadata file that is missing, unreadable, not JSON or of an unknown schema."""


class RegistryError(ValueError):
    """A path outside the registry root, or a bad query (phase, metric, resume spec)."""


class ObjectStoreError(ConfigError):
    """An object-store location that cannot be used; the message names the URI and why."""


class CheckpointCorruptError(Exception):
    """A checkpoint whose files do not match its metadata; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{os.fspath(path)}: {reason}")


def usage_error(message: object) -> int:
    """Print ``error: <message>`` on stderr, as every CLI does for bad input; returns 2."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE
