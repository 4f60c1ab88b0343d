"""Exceptions, mapped from microagent's exit codes and JSON error lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .types import Result

# microagent's own exit codes (README "Exit codes").
EXIT_TIMEOUT = 124
EXIT_INTERNAL = 125
EXIT_SETUP_FAILED = 126
EXIT_BOOT_FAILED = 127
EXIT_INTERRUPTED = 130


class MicroagentError(Exception):
    """microagent failed; ``message`` is its own words, ``exit_code`` its exit code."""

    def __init__(self, message: str, exit_code: Optional[int] = None, stderr: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.stderr = stderr


class BinaryNotFound(MicroagentError):
    """The ``microagent`` binary is not at ``MICROAGENT_BIN`` nor on ``PATH``."""


class ImageError(MicroagentError):
    """The image could not be pulled, read or turned into a root disk."""


class BootError(MicroagentError):
    """The VM did not boot, or the channel to its guest broke (exit code 127)."""


class NotFound(MicroagentError):
    """No workspace of that name."""


class Interrupted(MicroagentError):
    """The call was interrupted; microagent stopped the VM (exit code 130)."""


class _WithResult(MicroagentError):
    def __init__(self, message: str, result: "Result", exit_code: Optional[int] = None) -> None:
        super().__init__(message, exit_code)
        self.result = result


class Timeout(_WithResult):
    """The command hit its deadline and was killed; ``result`` has what it printed."""


class SetupFailed(_WithResult):
    """A ``setup`` command failed, so the main command did not run (exit code 126)."""


class CommandFailed(_WithResult):
    """The command exited non-zero and ``check=True`` was given."""


def error_for(message: str, exit_code: Optional[int], stderr: str = "") -> MicroagentError:
    """The exception for a JSON error line (or a failure without one)."""
    if exit_code == EXIT_BOOT_FAILED:
        return BootError(message, exit_code, stderr)
    if exit_code == EXIT_INTERRUPTED:
        return Interrupted(message, exit_code, stderr)
    if message.startswith(("image:", "pulling ")):
        return ImageError(message, exit_code, stderr)
    if "does not exist" in message:
        return NotFound(message, exit_code, stderr)
    return MicroagentError(message, exit_code, stderr)
