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
from typing import Iterator, List, Tuple

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
    socket paths live under it."""
    d = tempfile.mkdtemp(prefix="mapy", dir="/tmp")
    subprocess.run([microagent_bin, "--state-dir", d, "kernel", "install", "--from", str(kernel_path())],
                   check=True, capture_output=True)
    os.environ["MICROAGENT_STATE_DIR"] = d
    yield d
    shutil.rmtree(d, ignore_errors=True)


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


@pytest.fixture
def clean(microagent_bin: str, state_dir: str) -> Iterator[None]:
    """Asserts a test leaves no workspace and no VM process behind."""
    yield
    assert workspaces(microagent_bin, state_dir) == []
    assert vm_processes(state_dir) == []


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
