"""Fixtures shared by the Python suites (the SDK and the MCP server against
real VMs): the microagent binary, a private state folder with the guest
kernel installed, and a busybox image from Debian's busybox-static."""

from __future__ import annotations

import os
import shutil
import sys
import subprocess
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Tuple, TypeVar, Union

T = TypeVar("T")

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The SDK under test is the working tree's (scripts/setup also installs it).
sys.path.insert(0, str(ROOT / "sdk/python/src"))


def kernel_path() -> Path:
    explicit = os.environ.get("MICROAGENT_TEST_KERNEL")
    path = Path(explicit) if explicit else Path.home() / ".microagent/kernels/x86_64/vmlinux"
    assert path.is_file(), f"no guest kernel at {path}: run scripts/setup (or set MICROAGENT_TEST_KERNEL)"
    return path


@pytest.fixture(scope="session")
def microagent_bin() -> str:
    path = os.environ.get("MICROAGENT_BIN") or str(ROOT / "target/debug/microagent")
    assert os.access(path, os.X_OK), f"no microagent binary at {path}: cargo build -p microagent, or set MICROAGENT_BIN"
    os.environ["MICROAGENT_BIN"] = path
    return path


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("busybox") / "layout"
    subprocess.run([str(ROOT / "scripts/busybox-image"), str(out)], check=True, capture_output=True)
    return f"oci-layout:{out}:latest"


@pytest.fixture(scope="session")
def state_dir(microagent_bin: str) -> Iterator[str]:
    """One state folder for the session (root disks are cached once), with
    the kernel installed; MICROAGENT_STATE_DIR points at it. Short path:
    socket paths live under it. At the end of the session, no VM of the
    suite may be left: whatever is left is deleted (so no VM outlives its
    removed state folder), and then the session fails."""
    d = tempfile.mkdtemp(prefix="mapy", dir="/tmp")
    subprocess.run([microagent_bin, "--state-dir", d, "kernel", "install", "--from", str(kernel_path())],
                   check=True, capture_output=True)
    os.environ["MICROAGENT_STATE_DIR"] = d
    try:
        yield d
        left, stray = remove_leftovers(microagent_bin, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert (left, stray) == ([], []), f"the suite left workspaces {left} and VM processes {stray}"


def workspaces(microagent_bin: str, state_dir: str) -> List[str]:
    import json

    out = subprocess.run([microagent_bin, "--json", "--state-dir", state_dir, "list"],
                         check=True, capture_output=True).stdout
    return [json.loads(line)["name"] for line in out.splitlines() if line.strip()]


def vm_processes(state_dir: str) -> List[Tuple[int, str]]:
    """Processes (QEMU, vhost-device-vsock, ...) whose command line names the state folder."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state_dir in cmdline and "pytest" not in cmdline and " mcp" not in cmdline:
            found.append((int(entry), cmdline))
    return found


def remove_leftovers(microagent_bin: str, state_dir: str) -> Tuple[List[str], List[Tuple[int, str]]]:
    """Deletes every workspace left in the state folder (killing its VM),
    then kills, by pid, the VM processes still naming it; returns both as
    they were found, for the caller to fail on."""
    import signal

    left = workspaces(microagent_bin, state_dir)
    for name in left:
        subprocess.run([microagent_bin, "--state-dir", state_dir, "delete", "--force", name],
                       capture_output=True)
    stray = vm_processes(state_dir)
    for pid, _ in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left, stray


@pytest.fixture
def clean(microagent_bin: str, state_dir: str) -> Iterator[None]:
    """Asserts a test leaves no workspace and no VM process behind. What a
    test left (it failed half-way, say) is removed first, pass or fail, so
    no VM outlives the suite and the next test starts clean."""
    try:
        yield
    finally:
        left, stray = remove_leftovers(microagent_bin, state_dir)
    assert left == []
    assert stray == []


@pytest.fixture(autouse=True)
def schema_checked_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[dict]]:
    """Every JSON line the SDK reads is checked against the published
    schema (docs/json-output.schema.json) on the way in."""
    import json

    import jsonschema

    from microagent import _protocol

    schema = json.loads((ROOT / "docs/json-output.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    seen: List[dict] = []
    original = _protocol.parse_line

    def checked(raw: bytes) -> "dict | None":
        line = original(raw)
        if line is not None:
            errors = [f"{e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(line)]
            assert not errors, f"line breaks docs/json-output.schema.json: {line}: {errors}"
            seen.append(line)
        return line

    monkeypatch.setattr(_protocol, "parse_line", checked)
    yield seen


async def until(probe: Callable[[], Union[T, Awaitable[T]]], ok: Callable[[T], bool], limit: float = 60) -> T:
    """Polls ``probe`` until ``ok`` holds for what it returns (each probe is
    a real round trip, e.g. ``ps`` in the guest); fails after ``limit`` s."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + limit
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if ok(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"condition never held; last: {value!r}"
        await asyncio.sleep(0.2)


def wait_until(probe: Callable[[], T], ok: Callable[[T], bool], limit: float = 60) -> T:
    """:func:`until` for synchronous code."""
    import time

    deadline = time.monotonic() + limit
    while True:
        value = probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"condition never held; last: {value!r}"
        time.sleep(0.2)


def guest_processes(microagent_bin: str, state_dir: str, name: str) -> str:
    """The guest's ``ps`` output, through the CLI (another channel than the one under test)."""
    out = subprocess.run([microagent_bin, "--state-dir", state_dir, "exec", name, "--", "ps"],
                         capture_output=True, check=True)
    return out.stdout.decode()


@contextmanager
def loopback_http_server(files: Dict[str, bytes]) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 (a free port) serving ``files``: what a
    guest reaches through a ``host:PORT`` rule. Yields the port."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
