"""The values the SDK returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Literal, Optional


@dataclass(frozen=True)
class Result:
    """A finished command."""

    exit_code: int
    """The command's exit code; 128+N when killed by signal N."""
    stdout_bytes: bytes
    """Its stdout, byte for byte."""
    stderr_bytes: bytes
    """Its stderr, byte for byte."""
    timed_out: bool = False
    """It hit its deadline (run/exec raise :class:`Timeout` instead of returning this)."""
    signal: Optional[int] = None
    """The signal that ended it, if one did."""

    @property
    def stdout(self) -> str:
        """stdout as text (invalid UTF-8 replaced)."""
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        """stderr as text (invalid UTF-8 replaced)."""
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        """The command exited 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class Chunk:
    """Output as it arrives from :meth:`Sandbox.exec_stream`."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class SandboxInfo:
    """A workspace as ``microagent list`` shows it."""

    name: str
    state: str
    image: str
    memory_mib: int
    cpus: int
    labels: Dict[str, str] = field(default_factory=dict)
