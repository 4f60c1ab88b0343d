"""The synchronous API: :func:`run` and :class:`Sandbox`."""

from __future__ import annotations

import signal
import subprocess
import threading
from typing import IO, Iterator, List, Mapping, Optional, Sequence, Union

from . import _protocol as p
from .errors import BinaryNotFound, MicroagentError
from .types import Chunk, CopyStats, EgressRecord, Result, SandboxInfo, SnapshotInfo

#: How long microagent gets to clean up after an interrupt before it is killed.
_GRACE_SECONDS = 60


class _Invocation:
    """One ``microagent --json ...`` process: its stdout read line by line,
    its stderr collected, its stdin fed from a thread. On any exception in
    the caller (KeyboardInterrupt included) the process gets SIGINT, which
    makes microagent stop the VM and clean up, and is waited for."""

    def __init__(self, binary: str, state_dir: Optional[str], args: List[str],
                 stdin: Optional[bytes] = None) -> None:
        cmd = p.base_args(binary, state_dir) + args
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise BinaryNotFound(f"cannot start {cmd[0]}: {e}") from None
        self.outcome = p.Outcome()
        self._stderr: List[bytes] = []
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True)]
        if stdin is not None:
            self._threads.append(threading.Thread(target=self._feed, args=(stdin,), daemon=True))
        for t in self._threads:
            t.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _feed(self, data: bytes) -> None:
        stdin: Optional[IO[bytes]] = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def lines(self) -> Iterator[p.Line]:
        """Each JSON line as it arrives."""
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                line = p.parse_line(raw)
                if line is not None:
                    yield line
        except BaseException:
            self.interrupt()
            raise

    def chunks(self) -> Iterator[Chunk]:
        for line in self.lines():
            chunk = p.absorb(self.outcome, line)
            if chunk is not None:
                yield chunk

    def wait(self) -> int:
        try:
            code = self.proc.wait()
        except BaseException:
            self.interrupt()
            raise
        for t in self._threads:
            t.join()
        return code

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", errors="replace")

    def interrupt(self) -> None:
        """SIGINT (microagent cleans up and exits 130), then wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except BaseException:
                # A second Ctrl-C: still do not leave the process behind.
                self.proc.kill()
                self.proc.wait()
                raise

    def complete(self, check: bool = False) -> Result:
        for _ in self.chunks():
            pass
        code = self.wait()
        return p.finish(self.outcome, code, self.stderr_text(), check)

    def complete_ok(self) -> List[p.Line]:
        for line in self.lines():
            p.absorb(self.outcome, line)
        code = self.wait()
        return p.check_ok(self.outcome, code, self.stderr_text())


def run(image: str, command: str, *, setup: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None, memory_mib: Optional[int] = None, cpus: Optional[int] = None,
        network: Optional[str] = None, allow: Sequence[str] = (),
        deny: Sequence[str] = (), volumes: Sequence[str] = (), publish: Sequence[str] = (),
        check: bool = False, kernel: Optional[str] = None, binary: Optional[str] = None,
        state_dir: Optional[str] = None) -> Result:
    """Runs ``command`` (a shell command) in a fresh microVM from ``image``,
    after the ``setup`` commands, and deletes the VM.

    Raises :class:`ImageError`, :class:`BootError`, :class:`Timeout`,
    :class:`SetupFailed`; :class:`CommandFailed` on a non-zero exit only
    with ``check=True``. An interrupt (KeyboardInterrupt) stops the VM and
    removes it before the exception propagates.
    """
    machine = p.Machine(memory_mib, cpus, env, kernel, network, allow, deny, volumes, publish)
    args = p.run_args(image, command, setup, timeout, None, machine)
    return _Invocation(p.find_binary(binary), state_dir, args).complete(check)


class Sandbox(p.SandboxBase):
    """A workspace: a microVM with a disk that persists between commands.

    ``with Sandbox.create(image) as sb:`` deletes it (VM and disk) when the
    block ends, however it ends, unless ``keep=True``."""

    # -- creation and lookup -------------------------------------------------

    @classmethod
    def create(cls, image: str, *, name: Optional[str] = None, memory_mib: Optional[int] = None,
               cpus: Optional[int] = None, env: Optional[Mapping[str, str]] = None,
               network: Optional[str] = None, allow: Sequence[str] = (), deny: Sequence[str] = (),
               volumes: Sequence[str] = (), publish: Sequence[str] = (),
               keep: bool = False, kernel: Optional[str] = None, binary: Optional[str] = None,
               state_dir: Optional[str] = None) -> "Sandbox":
        """Creates a workspace from ``image`` and boots it. If booting fails,
        the workspace is deleted before the exception propagates.

        ``network`` is ``public`` (default), ``allowlist`` or ``none``;
        ``allow``/``deny`` are rules (``NAME``, ``.NAME``, IP, CIDR, each with
        ``:PORT``, or ``host:PORT``); ``volumes`` are ``HOST:GUEST[:ro]``
        folders; ``publish`` are ``[HOSTIP:]HOSTPORT:GUESTPORT`` forwards:
        the CLI's ``--network``, ``--allow``, ``--deny``, ``-v``, ``-p``."""
        machine = p.Machine(memory_mib, cpus, env, kernel, network, allow, deny, volumes, publish)
        sb = cls(name or p.new_name(), keep=keep, binary=binary, state_dir=state_dir)
        args = ["create", sb.name, "--image", image] + p.machine_flags(machine)
        sb._call(args)
        try:
            sb.start()
        except BaseException:
            sb._delete_quietly()
            raise
        return sb

    @classmethod
    def fork(cls, source: Union[str, "Sandbox"], tag: str, *, name: Optional[str] = None, keep: bool = False,
             binary: Optional[str] = None, state_dir: Optional[str] = None) -> "Sandbox":
        """A new running sandbox continued from ``source``'s snapshot ``tag``
        (its own copy of disk and memory: processes and files as they were).
        Deleted when a ``with`` block on it ends, unless ``keep=True``."""
        if isinstance(source, Sandbox):
            binary, state_dir = binary or source._binary, state_dir or source._state_dir
            source = source.name
        sb = cls(name or p.new_name(), keep=keep, binary=binary, state_dir=state_dir)
        sb._call(p.fork_args(sb.name, source, tag))
        return sb

    @classmethod
    def get(cls, name: str, *, binary: Optional[str] = None, state_dir: Optional[str] = None) -> "Sandbox":
        """An existing workspace (kept when a ``with`` block on it ends)."""
        sb = cls(name, keep=True, binary=binary, state_dir=state_dir)
        sb.info()
        return sb

    @classmethod
    def list(cls, *, binary: Optional[str] = None, state_dir: Optional[str] = None) -> List[SandboxInfo]:
        """Every workspace in the state folder."""
        lines = _Invocation(p.find_binary(binary), state_dir, ["list"]).complete_ok()
        return [p.info_of(line) for line in lines if line.get("type") == "workspace"]

    def info(self) -> SandboxInfo:
        """The workspace's state and machine."""
        lines = self._call(["status", self.name])
        info: SandboxInfo = p.info_of(lines[-1])
        return info

    # -- commands ------------------------------------------------------------

    def exec(self, command: p.Command, *, stdin: Union[str, bytes, None] = None, cwd: Optional[str] = None,
             env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
             check: bool = False) -> Result:
        """Runs ``command`` (argv list, or a string for ``/bin/sh -c``) and
        returns its result once it ends."""
        args = p.exec_args(self.name, command, cwd, env, timeout)
        return _Invocation(self._binary, self._state_dir, args, p.as_bytes(stdin)).complete(check)

    def exec_stream(self, command: p.Command, *, stdin: Union[str, bytes, None] = None,
                    cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                    timeout: Optional[float] = None, check: bool = False) -> Iterator[Union[Chunk, Result]]:
        """Yields :class:`Chunk` objects as the command prints, then its :class:`Result`."""
        args = p.exec_args(self.name, command, cwd, env, timeout)
        inv = _Invocation(self._binary, self._state_dir, args, p.as_bytes(stdin))
        try:
            yield from inv.chunks()
            code = inv.wait()
        finally:
            inv.interrupt()  # the caller stopped early: do not leave the exec behind
        yield p.finish(inv.outcome, code, inv.stderr_text(), check)

    # -- files -----------------------------------------------------------------

    def write_file(self, path: str, data: Union[str, bytes], *, mode: int = 0o644) -> None:
        """Writes ``data`` to ``path`` in the guest, creating parent folders."""
        p.split_remote(path)
        self.exec(["/bin/sh", "-c", p.WRITE_SCRIPT, "sh", path, f"{mode:o}"],
                  stdin=p.as_bytes(data) or b"", check=True)

    def read_file(self, path: str) -> bytes:
        """The bytes of ``path`` in the guest."""
        p.split_remote(path)
        return self.exec(["cat", "--", path], check=True).stdout_bytes

    def upload(self, local_dir: str, remote_dir: str = "/root") -> None:
        """Copies the contents of ``local_dir`` into ``remote_dir`` in the guest."""
        p.split_remote(remote_dir)
        self.exec(["/bin/sh", "-c", p.UNTAR_SCRIPT, "sh", remote_dir],
                  stdin=p.tar_directory(local_dir), check=True)

    def download(self, remote_path: str, local_dir: str) -> None:
        """Copies ``remote_path`` (a file or folder) from the guest into
        ``local_dir``; what comes out of the guest is checked like any
        untrusted archive (no paths outside ``local_dir``)."""
        parent, base = p.split_remote(remote_path)
        data = self.exec(["/bin/sh", "-c", p.TAR_SCRIPT, "sh", parent, base], check=True).stdout_bytes
        p.untar_into(data, local_dir)

    def copy_in(self, local_path: str, remote_path: str) -> CopyStats:
        """Copies the host file or folder ``local_path`` into the guest, as
        ``docker cp`` does: into ``remote_path`` if that is a folder, else as
        it. Works on a halted sandbox too (it is booted for the copy)."""
        p.split_remote(remote_path)
        return p.copy_stats_of(self._call(["cp", p.host_side(local_path), f"{self.name}:{remote_path}"]))

    def copy_out(self, remote_path: str, local_path: str) -> CopyStats:
        """Copies ``remote_path`` from the guest to the host: into
        ``local_path`` if that is a folder, else as it. Unpacked as hostile
        (no ``..``, nothing through a symlink), renamed into place when complete."""
        p.split_remote(remote_path)
        return p.copy_stats_of(self._call(["cp", f"{self.name}:{remote_path}", p.host_side(local_path)]))

    # -- network ---------------------------------------------------------------

    def egress(self) -> List[EgressRecord]:
        """Every decision of the sandbox's network policy so far, oldest first."""
        lines = self._call(["egress", self.name])
        return [p.egress_of(line) for line in lines if line.get("type") == "egress"]

    # -- lifecycle -------------------------------------------------------------

    def snapshot(self, tag: Optional[str] = None, *, disk_only: bool = False) -> SnapshotInfo:
        """Snapshots the running (or paused) sandbox: memory, device state and
        disk; with ``disk_only``, just the disk (also of a halted one).
        ``tag`` defaults to the time. For :meth:`fork` and :meth:`start`."""
        found = p.snapshots_of(self._call(p.snapshot_args(self.name, tag, disk_only)))
        if not found:
            raise MicroagentError("microagent reported no snapshot")
        return found[-1]

    def snapshots(self) -> List[SnapshotInfo]:
        """This sandbox's snapshots."""
        return p.snapshots_of(self._call(["snapshot", "list", self.name]))

    def delete_snapshot(self, tag: str) -> None:
        self._call(["snapshot", "delete", self.name, tag])

    def pause(self) -> None:
        """Stops the VM's vCPUs (state ``paused``); memory and connections are
        kept, :meth:`exec` fails until :meth:`resume`."""
        self._call(["pause", self.name])

    def resume(self) -> None:
        """Lets a paused sandbox run on from where it was."""
        self._call(["resume", self.name])

    def start(self, *, from_snapshot: Optional[str] = None) -> None:
        """Boots the workspace (or, from a halted one, continues it from its
        snapshot ``from_snapshot``); returns once commands can run."""
        extra = ["--from-snapshot", from_snapshot] if from_snapshot else []
        self._call(["start", self.name] + extra)

    def halt(self) -> None:
        """Shuts the workspace down cleanly, keeping its disk."""
        self._call(["halt", self.name])

    def delete(self) -> None:
        """Deletes the workspace, killing its VM first if it runs."""
        self._call(["delete", "--force", self.name])
        self._deleted = True

    def _delete_quietly(self) -> None:
        try:
            self.delete()
        except MicroagentError:
            pass

    def _call(self, args: List[str]) -> List[p.Line]:
        return _Invocation(self._binary, self._state_dir, args).complete_ok()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep and not self._deleted:
            self.delete()
