"""The Python SDK against real microVMs (QEMU; TCG on this machine)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import microagent
from microagent import aio

from conftest import loopback_http_server, vm_processes, wait_until, workspaces

pytestmark = pytest.mark.usefixtures("clean")


def test_run_returns_exit_code_and_both_streams(image: str, schema_checked_lines: list) -> None:
    r = microagent.run(image, "cat /tmp/s; echo err >&2; exit 3", setup=["echo set > /tmp/s"],
                       env={"X": "1"})
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (3, "set\n", "err\n", False)
    kinds = {line["type"] for line in schema_checked_lines}
    assert {"event", "stdout", "stderr", "result"} <= kinds, kinds
    with pytest.raises(microagent.CommandFailed) as failed:
        microagent.run(image, "echo $X; exit 4", env={"X": "y"}, check=True)
    assert failed.value.result.exit_code == 4
    assert failed.value.result.stdout == "y\n"


def test_sandbox_lifecycle_keeps_the_disk_across_halt_and_start(image: str, microagent_bin: str,
                                                                state_dir: str) -> None:
    with microagent.Sandbox.create(image, memory_mib=256, env={"GREETING": "hello"}) as sb:
        assert sb.exec("echo $GREETING > /root/note").ok
        assert sb.exec(["cat", "/root/note"]).stdout == "hello\n"
        assert sb.exec(["pwd"], cwd="/tmp").stdout == "/tmp\n"
        assert sb.exec("cat", stdin="piped").stdout == "piped"
        assert sb.info().state == "running"
        assert sb.info().memory_mib == 256
        assert [i.name for i in microagent.Sandbox.list()] == [sb.name]
        assert microagent.Sandbox.get(sb.name).info().name == sb.name
        sb.halt()
        assert sb.info().state == "halted"
        assert vm_processes(state_dir) == []
        sb.start()
        assert sb.exec("cat /root/note").stdout == "hello\n"
        name = sb.name
    assert name not in workspaces(microagent_bin, state_dir)


def test_stdout_chunks_arrive_before_the_command_ends(image: str) -> None:
    with microagent.Sandbox.create(image) as sb:
        arrivals = []
        for item in sb.exec_stream("echo one; sleep 2; echo two"):
            arrivals.append((time.monotonic(), item))
        (t_first, first), (t_end, result) = arrivals[0], arrivals[-1]
        assert isinstance(first, microagent.Chunk) and first.data == b"one\n"
        assert isinstance(result, microagent.Result) and result.exit_code == 0
        chunks = b"".join(i.data for _, i in arrivals if isinstance(i, microagent.Chunk))
        assert chunks == b"one\ntwo\n"
        assert t_end - t_first > 1.0, "the first line came only when the command ended"

        # Without a clock: the command goes on only once the test has seen
        # its first line (and told it so through the guest's disk).
        stream = sb.exec_stream("echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo done")
        assert next(stream) == microagent.Chunk("stdout", b"ready\n")
        sb.write_file("/tmp/go", "")
        rest = list(stream)
        assert rest[0] == microagent.Chunk("stdout", b"done\n")
        assert isinstance(rest[-1], microagent.Result)


def test_files_round_trip_byte_for_byte(image: str, tmp_path: Path) -> None:
    binary = bytes(range(256)) * 64
    with microagent.Sandbox.create(image) as sb:
        sb.write_file("/root/deep/dir/data.bin", binary, mode=0o600)
        assert sb.read_file("/root/deep/dir/data.bin") == binary
        assert sb.exec("stat -c %a /root/deep/dir/data.bin").stdout == "600\n"
        sb.write_file("/root/t.txt", "naïve €\n")
        assert sb.read_file("/root/t.txt").decode() == "naïve €\n"
        # The same bytes through the exec stream (JSON lines, base64 when needed).
        assert sb.exec(["cat", "/root/deep/dir/data.bin"]).stdout_bytes == binary

        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("A")
        (src / "sub" / "b.bin").write_bytes(binary)
        sb.upload(str(src), "/root/up")
        assert sb.exec("cat /root/up/a.txt").stdout == "A"
        sb.download("/root/up", str(tmp_path / "back"))
        assert (tmp_path / "back/up/a.txt").read_text() == "A"
        assert (tmp_path / "back/up/sub/b.bin").read_bytes() == binary
        with pytest.raises(microagent.CommandFailed):
            sb.read_file("/root/missing")


def test_errors_are_the_documented_exceptions(image: str, tmp_path: Path) -> None:
    with pytest.raises(microagent.BinaryNotFound):
        microagent.run(image, "true", binary=str(tmp_path / "no-such-binary"))
    with pytest.raises(microagent.ImageError) as bad:
        microagent.run(f"oci-layout:{tmp_path}/nothing-here", "true")
    assert bad.value.exit_code == 125 and bad.value.message.startswith("image:")
    with pytest.raises(microagent.SetupFailed):
        microagent.run(image, "true", setup=["exit 9"])
    with pytest.raises(microagent.Timeout) as late:
        microagent.run(image, "echo before; sleep 60", timeout=3)
    assert late.value.result.stdout == "before\n"
    with microagent.Sandbox.create(image) as sb:
        with pytest.raises(microagent.Timeout):
            sb.exec("sleep 60", timeout=1)
        assert sb.exec("echo still usable").stdout == "still usable\n"
    with pytest.raises(microagent.NotFound):
        microagent.Sandbox.get("no-such-sandbox")


def test_a_failed_boot_raises_boot_error_and_leaves_nothing(image: str, tmp_path: Path) -> None:
    # A kernel cut short: the VMM cannot load it, so the VM never boots.
    from conftest import kernel_path

    broken = tmp_path / "vmlinux"
    broken.write_bytes(kernel_path().read_bytes()[:2_000_000])
    with pytest.raises(microagent.BootError) as boot:
        microagent.Sandbox.create(image, kernel=str(broken))
    assert boot.value.exit_code == 127 and "boot" in boot.value.message
    with pytest.raises(microagent.BootError):
        microagent.run(image, "true", kernel=str(broken))


def test_the_sandbox_is_deleted_when_the_block_raises(image: str, microagent_bin: str,
                                                       state_dir: str) -> None:
    with pytest.raises(RuntimeError):
        with microagent.Sandbox.create(image) as sb:
            sb.exec("true")
            raise RuntimeError("agent crashed")
    assert workspaces(microagent_bin, state_dir) == []
    with pytest.raises(KeyboardInterrupt):
        with microagent.Sandbox.create(image) as sb:
            raise KeyboardInterrupt
    assert workspaces(microagent_bin, state_dir) == []


def test_keyboard_interrupt_during_run_stops_and_removes_the_vm(image: str, microagent_bin: str,
                                                                state_dir: str) -> None:
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_running() -> None:
        # Waits for the run's workspace to reach `running`, then delivers
        # SIGINT to the main thread, as Ctrl-C would (the SDK passes it on).
        import json
        import subprocess

        while True:
            out = subprocess.run([microagent_bin, "--json", "list"], capture_output=True).stdout
            if any(json.loads(l).get("state") == "running" for l in out.splitlines() if l.strip()):
                signal.pthread_kill(main, signal.SIGINT)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=interrupt_once_running, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        microagent.run(image, "sleep 120")
    watcher.join()
    assert workspaces(microagent_bin, state_dir) == []
    assert vm_processes(state_dir) == []


def test_asyncio_runs_three_sandboxes_at_once(image: str, tmp_path: Path) -> None:
    async def one(i: int) -> str:
        async with aio.Sandbox.create(image, memory_mib=192) as sb:
            await sb.write_file("/root/i", str(i))
            r = await sb.exec(["cat", "/root/i"])
            return r.stdout

    async def main() -> None:
        results = await asyncio.gather(*(one(i) for i in range(3)))
        assert results == ["0", "1", "2"]
        r = await aio.run(image, "echo async")
        assert r.stdout == "async\n"
        async with aio.Sandbox.create(image, network="none") as sb:
            seen = [item async for item in sb.exec_stream("echo a; echo b >&2")]
            assert isinstance(seen[-1], microagent.Result)
            assert (await sb.info()).network == "none"
            assert (await sb.exec("ls /sys/class/net")).stdout.split() == ["lo"]
            assert await sb.egress() == []
            await sb.pause()
            assert (await sb.info()).state == "paused"
            await sb.resume()
            (tmp_path / "a.txt").write_text("async copy\n")
            assert (await sb.copy_in(str(tmp_path / "a.txt"), "/root/a.txt")).bytes == 11
            await sb.copy_out("/root/a.txt", str(tmp_path / "b.txt"))
            assert (tmp_path / "b.txt").read_text() == "async copy\n"
            await sb.exec("echo forked > /tmp/f", check=True)
            assert (await sb.snapshot("a1")).tag == "a1"
            async with aio.Sandbox.fork(sb, "a1") as fork:
                assert (await fork.exec("cat /tmp/f")).stdout == "forked\n"
        with pytest.raises(RuntimeError):
            async with aio.Sandbox.create(image):
                raise RuntimeError("inside async with")

    asyncio.run(main())


def test_network_policy_volumes_ports_copies_pause_and_egress(image: str, tmp_path: Path) -> None:
    """One sandbox with an allowlist, a volume and a published port. Its
    traffic goes only to a server on this host's loopback (host:PORT)."""
    import socket
    import urllib.request

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj/a.txt").write_text("A\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    with loopback_http_server({"x": b"through the rule\n"}) as port:
        with microagent.Sandbox.create(image, network="allowlist", allow=[f"host:{port}"], deny=["pkg.test"],
                                       volumes=[f"{shared}:/mnt/shared"],
                                       publish=[f"127.0.0.1:{host_port}:8080"]) as sb:
            info = sb.info()
            assert (info.network, info.allow, info.deny) == ("allowlist", [f"host:{port}"], ["pkg.test"])
            url = f"http://host.microagent.internal:{port}/x"
            assert sb.exec(f"wget -q -O - {url}").stdout == "through the rule\n"
            assert not sb.exec(f"wget -q -O - http://host.microagent.internal:{port + 1}/x").ok

            def tcp(records: list) -> set:
                return {(r.decision, r.dst.rsplit(":", 1)[-1]) for r in records if r.proto == "tcp"}

            records = wait_until(sb.egress, lambda rs: {("allow", str(port)), ("deny", str(port + 1))} <= tcp(rs))
            allowed = next(r for r in records if r.allowed and r.proto == "tcp")
            assert allowed.rule == f"host:{port}" and allowed.bytes_in > 0
            denied = next(r for r in records if not r.allowed)
            assert denied.reason and str(port + 1) in denied.reason

            # The volume, both ways.
            assert sb.exec("cat /mnt/shared/in.txt").stdout == "from the host\n"
            sb.exec("echo from the guest > /mnt/shared/out.txt", check=True)
            assert (shared / "out.txt").read_text() == "from the guest\n"

            # The published port: busybox httpd in the guest, fetched on the host.
            sb.exec("mkdir -p /www && echo published > /www/index.html && httpd -p 8080 -h /www", check=True)
            with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html", timeout=30) as r:
                assert r.read() == b"published\n"

            # cp, both ways; then the same on the halted sandbox (a maintenance boot).
            assert sb.copy_in(str(tmp_path / "proj"), "/root").entries == 2
            assert sb.exec("cat /root/proj/a.txt").stdout == "A\n"
            assert sb.copy_out("/root/proj", str(tmp_path / "back")).bytes == 2
            assert (tmp_path / "back/a.txt").read_text() == "A\n"
            with pytest.raises(microagent.MicroagentError):
                sb.copy_out("/root/missing", str(tmp_path / "nothing"))

            # Pause keeps the processes; exec waits for resume.
            sb.pause()
            assert sb.info().state == "paused"
            with pytest.raises(microagent.MicroagentError) as paused:
                sb.exec("true")
            assert "paused" in paused.value.message
            sb.resume()
            assert sb.exec("pidof httpd").ok

    # Bad values are refused by microagent, naming the flag, and leave nothing.
    with pytest.raises(microagent.MicroagentError) as bad:
        microagent.Sandbox.create(image, network="allowlist", allow=["10.0.0.0/33"])
    assert "--allow" in bad.value.message and "10.0.0.0/33" in bad.value.message
    assert bad.value.exit_code == 125
    with pytest.raises(TypeError):
        microagent.Sandbox.create(image, allow="pkg.test")


def test_snapshot_fork_and_restore(image: str) -> None:
    """A fork goes on from the snapshot's memory (a tmpfs file, a running
    process) with its own disk; the source restores from it too."""
    with microagent.Sandbox.create(image) as sb:
        sb.exec("echo 7 > /tmp/n; setsid sleep 1000 </dev/null >/dev/null 2>&1 &", check=True)
        snap = sb.snapshot("t1")
        assert (snap.name, snap.tag, snap.disk_only, snap.memory_mib) == (sb.name, "t1", False, 512)
        assert snap.size_bytes > 0
        assert [s.tag for s in sb.snapshots()] == ["t1"]
        with microagent.Sandbox.fork(sb, "t1") as fork:
            assert fork.info().state == "running"
            assert fork.exec("cat /tmp/n; pidof sleep").stdout.split()[0] == "7"
            fork.exec("echo 8 > /tmp/n", check=True)
        assert sb.exec("cat /tmp/n").stdout == "7\n"
        sb.exec("echo 9 > /tmp/n", check=True)
        sb.halt()
        sb.start(from_snapshot="t1")
        assert sb.exec("cat /tmp/n").stdout == "7\n"
        sb.delete_snapshot("t1")
        assert sb.snapshots() == []
        with pytest.raises(microagent.MicroagentError):
            microagent.Sandbox.fork(sb, "t1")
    with pytest.raises(ValueError):
        microagent.Sandbox.fork("", "t1")


def test_the_package_is_typed() -> None:
    import microagent as pkg

    assert (Path(pkg.__file__).parent / "py.typed").is_file()
    assert os.environ.get("MICROAGENT_BIN")
