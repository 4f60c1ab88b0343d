"""The asyncio API: the same as :mod:`microagent.sandbox`, awaitable.

    async with microagent.aio.Sandbox.create("alpine") as sb:
        r = await sb.exec("echo hi")
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, AsyncIterator, Generator, List, Mapping, Optional, Sequence, Union

from . import _protocol as p
from .errors import BinaryNotFound, MicroagentError
from .types import Chunk, CopyStats, EgressRecord, Result, SandboxInfo, SnapshotInfo

_GRACE_SECONDS = 60
#: Longest JSON line accepted from microagent (a chunk is at most a few hundred KiB).
_LINE_LIMIT = 16 * 1024 * 1024


class _Invocation:
    """One ``microagent --json ...`` process under asyncio. If the awaiting
    task is cancelled (or interrupted), microagent gets SIGINT, cleans up
    the VM, and is waited for before the cancellation propagates."""

    def __init__(self, binary: str, state_dir: Optional[str], args: List[str],
                 stdin: Optional[bytes] = None) -> None:
        self._cmd = p.base_args(binary, state_dir) + args
        self._stdin = stdin
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.outcome = p.Outcome()
        self._stderr = b""
        self._tasks: List["asyncio.Task[Any]"] = []

    async def start(self) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self._cmd,
                stdin=asyncio.subprocess.PIPE if self._stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
            )
        except OSError as e:
            raise BinaryNotFound(f"cannot start {self._cmd[0]}: {e}") from None
        self._tasks.append(asyncio.ensure_future(self._drain_stderr()))
        if self._stdin is not None:
            self._tasks.append(asyncio.ensure_future(self._feed(self._stdin)))

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        self._stderr = await self.proc.stderr.read()

    async def _feed(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.proc.stdin.close()

    async def chunks(self) -> AsyncIterator[Chunk]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    break
                line = p.parse_line(raw)
                if line is None:
                    continue
                chunk = p.absorb(self.outcome, line)
                if chunk is not None:
                    yield chunk
        except BaseException:
            await self.interrupt()
            raise

    async def wait(self) -> int:
        assert self.proc is not None
        try:
            code = await self.proc.wait()
            await asyncio.gather(*self._tasks)
        except BaseException:
            await self.interrupt()
            raise
        return code

    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    async def interrupt(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGINT)
        # Shielded: a cancelled caller must still not leave the VM behind.
        waiter = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.shield(asyncio.wait_for(asyncio.shield(waiter), _GRACE_SECONDS))
        except asyncio.TimeoutError:
            proc.kill()
            await waiter
        except asyncio.CancelledError:
            await waiter
            raise

    async def complete(self, check: bool = False) -> Result:
        await self.start()
        async for _ in self.chunks():
            pass
        code = await self.wait()
        return p.finish(self.outcome, code, self.stderr_text(), check)

    async def complete_ok(self) -> List[p.Line]:
        await self.start()
        async for _ in self.chunks():
            pass
        code = await self.wait()
        return p.check_ok(self.outcome, code, self.stderr_text())


async def run(image: str, command: str, *, setup: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
              timeout: Optional[float] = None, memory_mib: Optional[int] = None, cpus: Optional[int] = None,
              network: Optional[str] = None, allow: Sequence[str] = (),
        deny: Sequence[str] = (), volumes: Sequence[str] = (), publish: Sequence[str] = (),
        check: bool = False, kernel: Optional[str] = None, binary: Optional[str] = None,
        state_dir: Optional[str] = None) -> Result:
    """:func:`microagent.run`, awaitable."""
    machine = p.Machine(memory_mib, cpus, env, kernel, network, allow, deny, volumes, publish)
    args = p.run_args(image, command, setup, timeout, None, machine)
    return await _Invocation(p.find_binary(binary), state_dir, args).complete(check)


class _Creating:
    """What :meth:`Sandbox.create` returns: await it, or ``async with`` it."""

    def __init__(self, make: "Any") -> None:
        self._make = make
        self._sandbox: Optional[Sandbox] = None

    def __await__(self) -> Generator[Any, None, "Sandbox"]:
        sandbox: Generator[Any, None, Sandbox] = self._make().__await__()
        return sandbox

    async def __aenter__(self) -> "Sandbox":
        self._sandbox = await self._make()
        return self._sandbox

    async def __aexit__(self, *exc: object) -> None:
        assert self._sandbox is not None
        await self._sandbox.__aexit__(*exc)


class Sandbox(p.SandboxBase):
    """:class:`microagent.Sandbox`, with awaitable methods."""

    @classmethod
    def create(cls, image: str, *, name: Optional[str] = None, memory_mib: Optional[int] = None,
               cpus: Optional[int] = None, env: Optional[Mapping[str, str]] = None,
               network: Optional[str] = None, allow: Sequence[str] = (), deny: Sequence[str] = (),
               volumes: Sequence[str] = (), publish: Sequence[str] = (),
               keep: bool = False, kernel: Optional[str] = None, binary: Optional[str] = None,
               state_dir: Optional[str] = None) -> _Creating:
        """Creates and boots a workspace; ``await`` it or ``async with`` it.
        Arguments as for :meth:`microagent.Sandbox.create`."""
        machine = p.Machine(memory_mib, cpus, env, kernel, network, allow, deny, volumes, publish)

        async def make() -> Sandbox:
            sb = cls(name or p.new_name(), keep=keep, binary=binary, state_dir=state_dir)
            await sb._call(["create", sb.name, "--image", image] + p.machine_flags(machine))
            try:
                await sb.start()
            except BaseException:
                await asyncio.shield(sb._delete_quietly())
                raise
            return sb

        return _Creating(make)

    @classmethod
    def fork(cls, source: Union[str, "Sandbox"], tag: str, *, name: Optional[str] = None, keep: bool = False,
             binary: Optional[str] = None, state_dir: Optional[str] = None) -> _Creating:
        """:meth:`microagent.Sandbox.fork`; ``await`` it or ``async with`` it."""
        if isinstance(source, Sandbox):
            binary, state_dir = binary or source._binary, state_dir or source._state_dir
            source = source.name
        p.fork_args(name or "new", source, tag)  # bad arguments raise now, not when awaited

        async def make() -> Sandbox:
            sb = cls(name or p.new_name(), keep=keep, binary=binary, state_dir=state_dir)
            await sb._call(p.fork_args(sb.name, str(source), tag))
            return sb

        return _Creating(make)

    @classmethod
    async def get(cls, name: str, *, binary: Optional[str] = None, state_dir: Optional[str] = None) -> "Sandbox":
        sb = cls(name, keep=True, binary=binary, state_dir=state_dir)
        await sb.info()
        return sb

    @classmethod
    async def list(cls, *, binary: Optional[str] = None, state_dir: Optional[str] = None) -> List[SandboxInfo]:
        lines = await _Invocation(p.find_binary(binary), state_dir, ["list"]).complete_ok()
        return [p.info_of(line) for line in lines if line.get("type") == "workspace"]

    async def info(self) -> SandboxInfo:
        lines = await self._call(["status", self.name])
        info: SandboxInfo = p.info_of(lines[-1])
        return info

    async def exec(self, command: p.Command, *, stdin: Union[str, bytes, None] = None, cwd: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                   check: bool = False) -> Result:
        args = p.exec_args(self.name, command, cwd, env, timeout)
        return await _Invocation(self._binary, self._state_dir, args, p.as_bytes(stdin)).complete(check)

    async def exec_stream(self, command: p.Command, *, stdin: Union[str, bytes, None] = None,
                          cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                          timeout: Optional[float] = None,
                          check: bool = False) -> AsyncIterator[Union[Chunk, Result]]:
        args = p.exec_args(self.name, command, cwd, env, timeout)
        inv = _Invocation(self._binary, self._state_dir, args, p.as_bytes(stdin))
        await inv.start()
        try:
            async for chunk in inv.chunks():
                yield chunk
            code = await inv.wait()
        finally:
            await inv.interrupt()
        yield p.finish(inv.outcome, code, inv.stderr_text(), check)

    async def write_file(self, path: str, data: Union[str, bytes], *, mode: int = 0o644) -> None:
        p.split_remote(path)
        await self.exec(["/bin/sh", "-c", p.WRITE_SCRIPT, "sh", path, f"{mode:o}"],
                        stdin=p.as_bytes(data) or b"", check=True)

    async def read_file(self, path: str) -> bytes:
        p.split_remote(path)
        return (await self.exec(["cat", "--", path], check=True)).stdout_bytes

    async def upload(self, local_dir: str, remote_dir: str = "/root") -> None:
        p.split_remote(remote_dir)
        await self.exec(["/bin/sh", "-c", p.UNTAR_SCRIPT, "sh", remote_dir],
                        stdin=p.tar_directory(local_dir), check=True)

    async def download(self, remote_path: str, local_dir: str) -> None:
        parent, base = p.split_remote(remote_path)
        r = await self.exec(["/bin/sh", "-c", p.TAR_SCRIPT, "sh", parent, base], check=True)
        p.untar_into(r.stdout_bytes, local_dir)

    async def copy_in(self, local_path: str, remote_path: str) -> CopyStats:
        p.split_remote(remote_path)
        return p.copy_stats_of(await self._call(["cp", p.host_side(local_path), f"{self.name}:{remote_path}"]))

    async def copy_out(self, remote_path: str, local_path: str) -> CopyStats:
        p.split_remote(remote_path)
        return p.copy_stats_of(await self._call(["cp", f"{self.name}:{remote_path}", p.host_side(local_path)]))

    async def egress(self) -> List[EgressRecord]:
        lines = await self._call(["egress", self.name])
        return [p.egress_of(line) for line in lines if line.get("type") == "egress"]

    async def snapshot(self, tag: Optional[str] = None, *, disk_only: bool = False) -> SnapshotInfo:
        found = p.snapshots_of(await self._call(p.snapshot_args(self.name, tag, disk_only)))
        if not found:
            raise MicroagentError("microagent reported no snapshot")
        return found[-1]

    async def snapshots(self) -> List[SnapshotInfo]:
        return p.snapshots_of(await self._call(["snapshot", "list", self.name]))

    async def delete_snapshot(self, tag: str) -> None:
        await self._call(["snapshot", "delete", self.name, tag])

    async def pause(self) -> None:
        await self._call(["pause", self.name])

    async def resume(self) -> None:
        await self._call(["resume", self.name])

    async def start(self, *, from_snapshot: Optional[str] = None) -> None:
        extra = ["--from-snapshot", from_snapshot] if from_snapshot else []
        await self._call(["start", self.name] + extra)

    async def halt(self) -> None:
        await self._call(["halt", self.name])

    async def delete(self) -> None:
        await self._call(["delete", "--force", self.name])
        self._deleted = True

    async def _delete_quietly(self) -> None:
        try:
            await self.delete()
        except MicroagentError:
            pass

    async def _call(self, args: List[str]) -> List[p.Line]:
        return await _Invocation(self._binary, self._state_dir, args).complete_ok()

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.keep and not self._deleted:
            # Shielded so a cancelled task still deletes its sandbox.
            await asyncio.shield(self.delete())
