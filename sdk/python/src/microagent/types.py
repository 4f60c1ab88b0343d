"""The values the SDK returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional


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
    network: str = "public"
    """Its network mode: ``public``, ``allowlist`` or ``none``."""
    allow: List[str] = field(default_factory=list)
    """Its allow rules."""
    deny: List[str] = field(default_factory=list)
    """Its deny rules."""


@dataclass(frozen=True)
class EgressRecord:
    """One decision of a sandbox's network policy (``microagent egress``)."""

    time: str
    """When (RFC 3339, UTC)."""
    decision: str
    """``allow`` or ``deny``."""
    proto: str
    """``tcp``, ``udp`` or ``dns``."""
    dst: str
    """The destination, ``IP:PORT``."""
    name: Optional[str] = None
    """The name the decision was about (from the guest: untrusted text)."""
    name_source: Optional[str] = None
    """How that name was known: ``dns``, ``sni`` or ``host``."""
    rule: Optional[str] = None
    """The rule that decided, if one did."""
    reason: Optional[str] = None
    """Why, in words."""
    bytes_out: int = 0
    bytes_in: int = 0
    duration_ms: int = 0

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


@dataclass(frozen=True)
class CopyStats:
    """What :meth:`Sandbox.copy_in` / :meth:`Sandbox.copy_out` moved."""

    entries: int
    """Files, folders and links."""
    bytes: int
    """File content bytes."""


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot of a sandbox (``microagent snapshot``)."""

    name: str
    """The sandbox it belongs to."""
    tag: str
    created_at: str
    """When it was made (RFC 3339)."""
    disk_only: bool
    """Only the disk: a fork or restore boots from it instead of continuing."""
    memory_mib: int
    size_bytes: int
    """Bytes it takes on the host."""
    frozen: bool = False
    """Disk only, of a running or paused sandbox: its filesystems were frozen
    while the disk was copied, so the disk is clean and complete."""
