"""What the sync and asyncio APIs share: finding the binary, building
command lines, and reading microagent's JSON lines (docs/json-output.md)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import (  # noqa: F401 (BinaryNotFound is re-used by the clients)
    EXIT_SETUP_FAILED,
    EXIT_TIMEOUT,
    BinaryNotFound,
    CommandFailed,
    MicroagentError,
    SetupFailed,
    Timeout,
    error_for,
)
from .types import Chunk, CopyStats, EgressRecord, Result, SandboxInfo, SnapshotInfo

#: One decoded JSON line.
Line = Dict[str, Any]

Command = Union[str, Sequence[str]]

#: The ``--json`` schema version this SDK reads.
JSON_OUTPUT_VERSION = 1

#: Writes stdin to "$1" (parents created), then sets mode "$2".
WRITE_SCRIPT = 'umask 022; mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"'
#: Unpacks a tar stream on stdin into "$1".
UNTAR_SCRIPT = 'mkdir -p -- "$1" && tar -x -f - -C "$1"'
#: Packs "$2" (relative to "$1") as a tar stream on stdout.
TAR_SCRIPT = 'tar -c -f - -C "$1" "$2"'


class SandboxBase:
    """What the sync and asyncio sandboxes share: a workspace name, whether
    it outlives the ``with`` block, and how to reach microagent."""

    def __init__(self, name: str, *, keep: bool = False, binary: Optional[str] = None,
                 state_dir: Optional[str] = None) -> None:
        self.name = name
        self.keep = keep
        self._deleted = False
        self._binary = find_binary(binary)
        self._state_dir = state_dir

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self.name!r})"


def find_binary(binary: Optional[str] = None) -> str:
    """``binary``, else ``$MICROAGENT_BIN``, else ``microagent`` on ``PATH``."""
    candidate = binary or os.environ.get("MICROAGENT_BIN")
    if candidate:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise BinaryNotFound(f"microagent binary {candidate!r} (MICROAGENT_BIN) is not an executable file")
    found = shutil.which("microagent")
    if not found:
        raise BinaryNotFound("no microagent binary: set MICROAGENT_BIN or put microagent on PATH")
    return found


def base_args(binary: str, state_dir: Optional[str]) -> List[str]:
    args = [binary, "--json"]
    if state_dir:
        args += ["--state-dir", str(state_dir)]
    return args


def argv_of(command: Command) -> List[str]:
    """A string runs with ``/bin/sh -c``; a sequence is the argv itself."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    argv = [str(a) for a in command]
    if not argv:
        raise ValueError("an empty argv")
    return argv


def env_flags(env: Optional[Mapping[str, str]]) -> List[str]:
    flags: List[str] = []
    for key, value in (env or {}).items():
        if not key or "=" in key:
            raise ValueError(f"bad environment variable name {key!r}")
        flags += ["-e", f"{key}={value}"]
    return flags


@dataclass(frozen=True)
class Machine:
    """A machine as ``run`` and ``create`` take it: size, environment,
    network policy, host folders and published ports (the CLI's flags)."""

    memory_mib: Optional[int] = None
    cpus: Optional[int] = None
    env: Optional[Mapping[str, str]] = None
    kernel: Optional[str] = None
    network: Optional[str] = None
    allow: Sequence[str] = ()
    deny: Sequence[str] = ()
    volumes: Sequence[str] = ()
    publish: Sequence[str] = ()


def _strings(what: str, values: Sequence[str]) -> List[str]:
    if isinstance(values, str):
        raise TypeError(f"{what} takes a list of strings, not one string")
    return [str(v) for v in values]


def machine_flags(m: Machine) -> List[str]:
    """The CLI flags for ``m``; the values are checked by microagent (a bad
    one raises :class:`MicroagentError` naming the flag)."""
    flags = env_flags(m.env)
    if m.kernel is not None:
        flags += ["--kernel", str(m.kernel)]
    if m.memory_mib is not None:
        flags += ["--memory", str(int(m.memory_mib))]
    if m.cpus is not None:
        flags += ["--cpus", str(int(m.cpus))]
    if m.network is not None:
        flags += ["--network", str(m.network)]
    for flag, values in (("--allow", m.allow), ("--deny", m.deny), ("--volume", m.volumes),
                         ("--publish", m.publish)):
        for value in _strings(flag.lstrip("-"), values):
            flags += [flag, value]
    return flags


def run_args(image: str, command: str, setup: Sequence[str], timeout: Optional[float],
             name: Optional[str], machine: Machine) -> List[str]:
    args = ["run", "--image", image, "--exec", command]
    for step in setup:
        args += ["--setup", step]
    if timeout is not None:
        args += ["--timeout", str(max(1, int(timeout)))]
    if name:
        args += ["--name", name]
    return args + machine_flags(machine)


def exec_args(name: str, command: Command, cwd: Optional[str], env: Optional[Mapping[str, str]],
              timeout: Optional[float]) -> List[str]:
    args = ["exec", name]
    if cwd:
        args += ["--cwd", cwd]
    if timeout is not None:
        args += ["--timeout", str(max(1, int(timeout)))]
    return args + env_flags(env) + ["--"] + argv_of(command)


def new_name() -> str:
    return f"sdk-{uuid.uuid4().hex[:12]}"


def as_bytes(data: Union[str, bytes, None]) -> Optional[bytes]:
    if data is None or isinstance(data, bytes):
        return data
    return data.encode("utf-8")


@dataclass
class Outcome:
    """Everything one microagent invocation printed."""

    lines: List[Line] = field(default_factory=list)
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    result: Optional[Line] = None
    error: Optional[Line] = None


def parse_line(raw: bytes) -> Optional[Line]:
    """One stdout line as JSON; ``None`` for blank lines."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        line = json.loads(raw)
    except json.JSONDecodeError as e:
        raise MicroagentError(f"microagent printed a line that is not JSON: {raw[:200]!r}: {e}") from None
    if not isinstance(line, dict):
        raise MicroagentError(f"microagent printed a JSON line that is not an object: {raw[:200]!r}")
    return line


def chunk_of(line: Line) -> Optional[Chunk]:
    """The output chunk a line carries, decoded faithfully."""
    kind = line.get("type")
    if kind not in ("stdout", "stderr"):
        return None
    data = line.get("data", "")
    if line.get("encoding") == "base64":
        return Chunk(kind, base64.b64decode(data))
    return Chunk(kind, data.encode("utf-8"))


def absorb(outcome: Outcome, line: Line) -> Optional[Chunk]:
    """Adds a line to ``outcome``; returns the chunk it carried, if any."""
    outcome.lines.append(line)
    chunk = chunk_of(line)
    if chunk is not None:
        (outcome.stdout if chunk.stream == "stdout" else outcome.stderr).extend(chunk.data)
    elif line.get("type") == "result":
        outcome.result = line
    elif line.get("type") == "error":
        outcome.error = line
    return chunk


def result_of(outcome: Outcome) -> Result:
    r = outcome.result or {}
    inner = r.get("result") or {}
    exit_code = inner.get("exitCode")
    signal = inner.get("signal")
    if exit_code is None:
        exit_code = 128 + signal if signal is not None else int(r.get("exitCode", -1))
    return Result(
        exit_code=int(exit_code),
        stdout_bytes=bytes(outcome.stdout),
        stderr_bytes=bytes(outcome.stderr),
        timed_out=bool(r.get("timedOut", False)),
        signal=signal,
    )


def finish(outcome: Outcome, returncode: int, stderr_text: str, check: bool = False) -> Result:
    """The command's :class:`Result`, or the exception microagent's output calls for."""
    if outcome.error is not None:
        raise error_for(str(outcome.error.get("error", "microagent failed")),
                        int(outcome.error.get("exitCode", returncode)), stderr_text)
    if outcome.result is None:
        detail = stderr_text.strip().splitlines()[-1] if stderr_text.strip() else "no result line"
        raise error_for(f"microagent exited {returncode} without a result: {detail}", returncode, stderr_text)
    result = result_of(outcome)
    if result.timed_out or returncode == EXIT_TIMEOUT:
        raise Timeout("the command timed out and was killed", result, returncode)
    setup = outcome.result.get("setupFailed")
    if setup or returncode == EXIT_SETUP_FAILED:
        what = setup.get("command") if isinstance(setup, dict) else "a setup command"
        raise SetupFailed(f"setup command failed ({result.exit_code}): {what}", result, returncode)
    if check and result.exit_code != 0:
        raise CommandFailed(f"command exited {result.exit_code}: {result.stderr.strip()[-500:]}",
                            result, result.exit_code)
    return result


def check_ok(outcome: Outcome, returncode: int, stderr_text: str) -> List[Line]:
    """The lines of a command that prints no result (create, start, ...)."""
    if outcome.error is not None or returncode != 0:
        err = outcome.error or {}
        message = str(err.get("error") or stderr_text.strip() or f"microagent exited {returncode}")
        raise error_for(message, int(err.get("exitCode", returncode)), stderr_text)
    return outcome.lines


def host_side(path: str) -> str:
    """A host path for ``cp``: one that would read as ``NAME:PATH`` (or as
    ``-``, a tar stream) is made unambiguous with ``./``."""
    path = os.fspath(path)
    if path == "-" or (":" in path.split("/", 1)[0] and not path.startswith("/")):
        return "./" + path
    return path


def copy_stats_of(lines: List[Line]) -> CopyStats:
    copied = next((line for line in lines if line.get("type") == "copied"), {})
    return CopyStats(entries=int(copied.get("entries", 0)), bytes=int(copied.get("bytes", 0)))


def egress_of(line: Line) -> EgressRecord:
    """One ``egress`` line (docs/json-output.md) as a record."""

    def opt(key: str) -> Optional[str]:
        value = line.get(key)
        return None if value is None else str(value)

    return EgressRecord(
        time=str(line.get("time", "")),
        decision=str(line.get("decision", "")),
        proto=str(line.get("proto", "")),
        dst=str(line.get("dst", "")),
        name=opt("name"),
        name_source=opt("nameSource"),
        rule=opt("rule"),
        reason=opt("reason"),
        bytes_out=int(line.get("bytesOut", 0)),
        bytes_in=int(line.get("bytesIn", 0)),
        duration_ms=int(line.get("durationMs", 0)),
    )


def snapshot_args(name: str, tag: Optional[str], disk_only: bool) -> List[str]:
    args = ["snapshot", "create", name]
    if tag is not None:
        args += ["--tag", str(tag)]
    return args + (["--disk-only"] if disk_only else [])


def snapshots_of(lines: List[Line]) -> List[SnapshotInfo]:
    """The ``snapshot`` lines (docs/json-output.md) as records."""
    found = []
    for line in lines:
        if line.get("type") != "snapshot":
            continue
        snap = line.get("snapshot") or {}
        found.append(SnapshotInfo(
            name=str(snap.get("runtimeID", "")),
            tag=str(snap.get("tag", "")),
            created_at=str(snap.get("createdAt", "")),
            disk_only=bool(snap.get("diskOnly", False)),
            memory_mib=int(snap.get("memoryMiB", 0)),
            size_bytes=int(snap.get("sizeBytes", 0)),
            frozen=bool(snap.get("frozen", False)),
        ))
    return found


def fork_args(name: str, source: str, tag: str) -> List[str]:
    if not source or not tag or ":" in source:
        raise ValueError(f"fork needs a sandbox name and a tag, got {source!r}, {tag!r}")
    return ["create", name, "--from-snapshot", f"{source}:{tag}"]


def info_of(line: Line) -> SandboxInfo:
    config = line.get("config") or {}
    network = config.get("network") or {}
    return SandboxInfo(
        name=str(line.get("name")),
        state=str(line.get("state")),
        image=str(line.get("image", "")),
        memory_mib=int(config.get("memoryMiB", 0)),
        cpus=int(config.get("cpuCount", 0)),
        labels=dict(line.get("labels") or {}),
        network=str(network.get("mode", "public")),
        allow=[str(r) for r in network.get("allow") or []],
        deny=[str(r) for r in network.get("deny") or []],
    )


def tar_directory(local_dir: str) -> bytes:
    """``local_dir``'s contents as an uncompressed tar stream."""
    import io
    import tarfile

    if not os.path.isdir(local_dir):
        raise NotADirectoryError(local_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(os.listdir(local_dir)):
            tar.add(os.path.join(local_dir, entry), arcname=entry)
    return buf.getvalue()


def untar_into(data: bytes, local_dir: str) -> None:
    """Unpacks a tar stream from the guest (hostile) with tarfile's ``data``
    filter: no absolute paths, no ``..``, no links out, no devices."""
    import io
    import tarfile

    os.makedirs(local_dir, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(local_dir, filter="data")


def split_remote(path: str) -> Tuple[str, str]:
    path = path.rstrip("/") or "/"
    if not path.startswith("/"):
        raise ValueError(f"guest path {path!r} must be absolute")
    parent, _, base = path.rpartition("/")
    return (parent or "/", base or ".")


Lines = Iterable[Line]
Env = Optional[Dict[str, str]]
