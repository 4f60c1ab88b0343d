"""Run commands in Linux microVMs from Python.

A thin, typed layer over the ``microagent`` CLI's JSON lines
(docs/json-output.md); the binary comes from ``$MICROAGENT_BIN`` or ``PATH``.

    import microagent

    r = microagent.run("alpine", "echo hello")
    print(r.exit_code, r.stdout)

    with microagent.Sandbox.create("alpine") as sb:
        sb.write_file("/root/x.txt", "hi")
        print(sb.exec(["cat", "/root/x.txt"]).stdout)

asyncio: :mod:`microagent.aio` has the same API, awaitable.
"""

from . import aio
from .errors import (
    BinaryNotFound,
    BootError,
    CommandFailed,
    ImageError,
    Interrupted,
    MicroagentError,
    NotFound,
    SetupFailed,
    Timeout,
)
from .sandbox import Sandbox, run
from .types import Chunk, CopyStats, EgressRecord, Result, SandboxInfo, SnapshotInfo

__all__ = [
    "aio",
    "run",
    "Sandbox",
    "Result",
    "Chunk",
    "SandboxInfo",
    "EgressRecord",
    "CopyStats",
    "SnapshotInfo",
    "MicroagentError",
    "BinaryNotFound",
    "ImageError",
    "BootError",
    "Timeout",
    "SetupFailed",
    "CommandFailed",
    "NotFound",
    "Interrupted",
]
