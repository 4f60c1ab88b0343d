"""`microagent mcp` driven by the official Python MCP client (`mcp` from
PyPI) over stdio, against real microVMs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from conftest import guest_processes, loopback_http_server, until, vm_processes, workspaces

pytestmark = pytest.mark.usefixtures("clean")

TOOLS = {
    "run", "workspace_create", "workspace_start", "workspace_exec", "workspace_write_file",
    "workspace_read_file", "workspace_cp", "workspace_list", "workspace_status", "workspace_halt",
    "workspace_pause", "workspace_resume", "workspace_egress_log", "workspace_snapshot", "workspace_fork",
    "workspace_delete",
}


def server(microagent_bin: str, state_dir: str, *flags: str) -> StdioServerParameters:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "MICROAGENT_INIT") if k in os.environ}
    env["MICROAGENT_STATE_DIR"] = state_dir
    return StdioServerParameters(command=microagent_bin, args=["mcp", "--allow-local-images", *flags], env=env)


@asynccontextmanager
async def session(microagent_bin: str, state_dir: str, *flags: str) -> AsyncIterator[ClientSession]:
    async with stdio_client(server(microagent_bin, state_dir, *flags)) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


async def call(s: ClientSession, tool: str, **arguments: Any) -> Dict[str, Any]:
    """Calls a tool that must succeed; returns its structured content."""
    r = await s.call_tool(tool, arguments)
    assert not r.is_error, f"{tool} failed: {r.content}"
    assert r.content and r.content[0].type == "text" and r.content[0].text
    assert isinstance(r.structured_content, dict)
    return r.structured_content


async def tool_error(s: ClientSession, tool: str, **arguments: Any) -> str:
    """Calls a tool that must fail; returns the error text the model sees."""
    try:
        r = await s.call_tool(tool, arguments)
    except MCPError as e:
        return str(e.error.message)
    assert r.is_error, f"{tool} should have failed: {r.structured_content}"
    return " ".join(getattr(c, "text", "") for c in r.content)


def test_the_client_lists_the_tools_and_runs_a_one_shot_command(microagent_bin: str, state_dir: str,
                                                               image: str) -> None:
    async def main() -> None:
        async with session(microagent_bin, state_dir) as s:
            tools = (await s.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            for t in tools:
                assert t.description and t.input_schema["type"] == "object"
                assert t.output_schema and t.output_schema["type"] == "object", t.name
            messages: List[str] = []

            async def on_progress(progress: float, total: Any, message: Any) -> None:
                messages.append(str(message))

            r = await s.call_tool("run", {"image": image, "setup": ["echo pre > /tmp/p"],
                                          "command": "cat /tmp/p; echo $V; echo oops >&2; exit 3",
                                          "env": {"V": "v"}},
                                  progress_callback=on_progress)
            assert not r.is_error, r.content
            out = r.structured_content
            assert out is not None
            assert (out["exitCode"], out["stdout"], out["stderr"], out["timedOut"]) == (3, "pre\nv\n", "oops\n", False)
            assert not out["stdoutTruncated"]
            assert "exit code 3" in r.content[0].text
            assert any("running" in m for m in messages), messages

            # Output is bounded and the truncation said.
            big = await call(s, "run", image=image, command="yes 0123456789 | head -c 200000")
            assert big["stdoutTruncated"] and big["stdoutBytes"] == 200000
            assert len(big["stdout"].encode()) == 64 * 1024
            timed = await call(s, "run", image=image, command="sleep 60", timeoutSeconds=2)
            assert timed["timedOut"]

    asyncio.run(main())


def test_a_workspace_round_trip_and_bad_calls_keep_the_server_serving(microagent_bin: str, state_dir: str,
                                                                      image: str) -> None:
    async def main() -> None:
        async with session(microagent_bin, state_dir, "--max-file-bytes", "1048576") as s:
            created = await call(s, "workspace_create", name="mcp-ws", image=image)
            assert created["state"] == "running"
            wrote = await call(s, "workspace_write_file", name="mcp-ws", path="/root/in.txt",
                               content="hello from mcp\n")
            assert wrote["bytes"] == 15
            ran = await call(s, "workspace_exec", name="mcp-ws",
                             command="tr a-z A-Z < /root/in.txt > /root/out.txt; cat /root/out.txt")
            assert (ran["exitCode"], ran["stdout"]) == (0, "HELLO FROM MCP\n")
            argv = await call(s, "workspace_exec", name="mcp-ws", argv=["cat"], stdin="piped")
            assert argv["stdout"] == "piped"
            read = await call(s, "workspace_read_file", name="mcp-ws", path="/root/out.txt")
            assert (read["content"], read["encoding"], read["size"], read["truncated"]) == \
                ("HELLO FROM MCP\n", "utf-8", 15, False)
            part = await call(s, "workspace_read_file", name="mcp-ws", path="/root/out.txt", offset=6, maxBytes=4)
            assert (part["content"], part["truncated"]) == ("FROM", True)
            await call(s, "workspace_write_file", name="mcp-ws", path="/root/b.bin", contentBase64="/wABAg==")
            binary = await call(s, "workspace_read_file", name="mcp-ws", path="/root/b.bin")
            assert (binary["encoding"], binary["content"]) == ("base64", "/wABAg==")
            listed = await call(s, "workspace_list")
            assert [w["name"] for w in listed["workspaces"]] == ["mcp-ws"]
            assert (await call(s, "workspace_status", name="mcp-ws"))["state"] == "running"

            # Bad calls: each gets an error, and the next call still works.
            msg = await tool_error(s, "no_such_tool")
            assert "no_such_tool" in msg or "not found" in msg.lower()
            assert (await call(s, "workspace_list"))["workspaces"]
            msg = await tool_error(s, "workspace_exec", name=5, command="true")
            assert "name" in msg or "invalid" in msg.lower()
            msg = await tool_error(s, "workspace_write_file", name="mcp-ws", path="/root/huge",
                                   content="x" * (100 * 1024 * 1024))
            assert "larger than" in msg, msg
            msg = await tool_error(s, "workspace_write_file", name="mcp-ws", path="/root/big",
                                   content="x" * (2 * 1024 * 1024))
            assert "limit" in msg, msg
            msg = await tool_error(s, "run", image="oci-layout:/etc", command="true", memoryMib=1 << 20)
            assert "--max-memory" in msg, msg
            msg = await tool_error(s, "workspace_read_file", name="mcp-ws", path="/root/missing")
            assert "no such" in msg, msg
            assert (await call(s, "workspace_exec", name="mcp-ws", command="echo alive"))["stdout"] == "alive\n"

            # A workspace this server did not create is not there for it.
            subprocess.run([microagent_bin, "--state-dir", state_dir, "create", "foreign", "--image", image],
                           check=True, capture_output=True)
            for tool, args in [("workspace_status", {}), ("workspace_exec", {"command": "true"}),
                               ("workspace_delete", {})]:
                msg = await tool_error(s, tool, name="foreign", **args)
                assert "no workspace named" in msg, msg
            assert [w["name"] for w in (await call(s, "workspace_list"))["workspaces"]] == ["mcp-ws"]
            subprocess.run([microagent_bin, "--state-dir", state_dir, "delete", "foreign"], check=True)

            halted = await call(s, "workspace_halt", name="mcp-ws")
            assert halted["state"] == "halted"
            assert (await call(s, "workspace_start", name="mcp-ws"))["state"] == "running"
            assert (await call(s, "workspace_read_file", name="mcp-ws", path="/root/out.txt"))["content"] \
                == "HELLO FROM MCP\n"
            assert (await call(s, "workspace_delete", name="mcp-ws"))["state"] == "deleted"

        # Local images are refused unless the operator allows them.
        async with stdio_client(StdioServerParameters(
                command=microagent_bin, args=["mcp"],
                env={"PATH": os.environ["PATH"], "MICROAGENT_STATE_DIR": state_dir})) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                msg = await tool_error(s, "run", image=image, command="true")
                assert "--allow-local-images" in msg, msg

    asyncio.run(main())


def test_a_client_that_disconnects_mid_run_leaves_no_vm(microagent_bin: str, state_dir: str,
                                                        image: str) -> None:
    async def main() -> None:
        async with session(microagent_bin, state_dir) as s:
            running = asyncio.Event()

            async def on_progress(progress: float, total: Any, message: Any) -> None:
                if "running" in str(message):
                    running.set()

            call_task = asyncio.ensure_future(
                s.call_tool("run", {"image": image, "command": "sleep 300"}, progress_callback=on_progress))
            await asyncio.wait_for(running.wait(), 120)
            assert [n for n in workspaces(microagent_bin, state_dir) if n.startswith("run-")]
            call_task.cancel()
        # Leaving the blocks closed the server's stdin: it stops the VM,
        # the run cleans up, and the server exits.

    asyncio.run(main())
    assert workspaces(microagent_bin, state_dir) == []
    assert vm_processes(state_dir) == []


def test_the_servers_network_policy_only_narrows_and_files_pause_and_egress_work(
        microagent_bin: str, state_dir: str, image: str, tmp_path: Any) -> None:
    """One workspace under a server with an allowlist and a files folder.
    Traffic goes only to a server on this host's loopback (host:PORT)."""
    files = tmp_path / "files"
    (files / "proj").mkdir(parents=True)
    (files / "proj/hello.txt").write_text("hello via cp\n")
    os.symlink("/etc", files / "leak")

    async def main(port: int) -> None:
        flags = ("--network", "allowlist", "--allow", f"host:{port}", "--files-dir", str(files),
                 "--max-copy-bytes", "100000")
        async with session(microagent_bin, state_dir, *flags) as s:
            # Wider than the server's policy: refused before any VM exists.
            for args, needle in [({"network": "public"}, "public"),
                                 ({"allow": [f"host:{port + 1}"]}, f"host:{port + 1}"),
                                 ({"allow": ["10.0.0.1"]}, "10.0.0.1")]:
                msg = await tool_error(s, "workspace_create", name="mcp-net", image=image, **args)
                assert "widen" in msg and needle in msg and f"allow host:{port}" in msg, msg
            msg = await tool_error(s, "run", image=image, command="true", allow=["bad rule!"])
            assert "bad rule!" in msg, msg
            assert workspaces(microagent_bin, state_dir) == []

            await call(s, "workspace_create", name="mcp-net", image=image)
            status = await call(s, "workspace_status", name="mcp-net")
            assert status["network"] == {"mode": "allowlist", "allow": [f"host:{port}"], "deny": []}
            got = await call(s, "workspace_exec", name="mcp-net",
                             command=f"wget -q -O - http://host.microagent.internal:{port}/x")
            assert (got["exitCode"], got["stdout"]) == (0, "from the loopback server\n"), got
            # A port no rule names: the stack refuses it itself (and says so).
            other = await call(s, "workspace_exec", name="mcp-net",
                               command=f"wget -q -O - http://host.microagent.internal:{port + 1}/x")
            assert other["exitCode"] != 0

            async def decisions() -> List[Dict[str, Any]]:
                log = await call(s, "workspace_egress_log", name="mcp-net")
                assert log["total"] >= len(log["records"])
                return list(log["records"])

            def seen(records: List[Dict[str, Any]]) -> bool:
                kinds = {(r["decision"], r["dst"].rsplit(":", 1)[-1]) for r in records if r["proto"] == "tcp"}
                return {("allow", str(port)), ("deny", str(port + 1))} <= kinds

            records = await until(decisions, seen)
            assert all(isinstance(r["time"], str) for r in records)
            limited = await call(s, "workspace_egress_log", name="mcp-net", limit=1)
            assert len(limited["records"]) == 1 and limited["truncated"]

            # cp: only inside the files folder.
            cp = await call(s, "workspace_cp", name="mcp-net", direction="toGuest", hostPath="proj",
                            guestPath="/root")
            assert cp["entries"] == 2 and cp["bytes"] == 13, cp
            assert (await call(s, "workspace_exec", name="mcp-net",
                               command="cat /root/proj/hello.txt"))["stdout"] == "hello via cp\n"
            await call(s, "workspace_exec", name="mcp-net",
                       command="mkdir /root/out && echo made > /root/out/r.txt && ln -s /etc /root/out/l")
            await call(s, "workspace_cp", name="mcp-net", direction="fromGuest", hostPath=".",
                       guestPath="/root/out")
            assert (files / "out/r.txt").read_text() == "made\n"
            assert os.readlink(files / "out/l") == "/etc"
            for host_path, why in [("/etc/passwd", "relative"), ("../x", ".."), ("leak/passwd", "leads out"),
                                   ("out/l/passwd", "leads out"), ("missing", "does not exist")]:
                msg = await tool_error(s, "workspace_cp", name="mcp-net", direction="toGuest",
                                       hostPath=host_path, guestPath="/root")
                assert why in msg, (host_path, msg)
            msg = await tool_error(s, "workspace_cp", name="mcp-net", direction="fromGuest",
                                   hostPath="leak/x", guestPath="/root/out")
            assert "leads out" in msg, msg
            # A guest cannot fill the host's disk: past --max-copy-bytes nothing is kept.
            await call(s, "workspace_exec", name="mcp-net", command="head -c 300000 /dev/zero > /root/big")
            before = sorted(os.listdir(files))
            msg = await tool_error(s, "workspace_cp", name="mcp-net", direction="fromGuest", hostPath=".",
                                   guestPath="/root/big")
            assert "limit of 100000 bytes" in msg, msg
            assert sorted(os.listdir(files)) == before

            # Pause and resume.
            await call(s, "workspace_exec", name="mcp-net", command="echo before > /tmp/state")
            assert (await call(s, "workspace_pause", name="mcp-net"))["state"] == "paused"
            assert (await call(s, "workspace_status", name="mcp-net"))["state"] == "paused"
            msg = await tool_error(s, "workspace_exec", name="mcp-net", command="true")
            assert "paused" in msg, msg
            assert (await call(s, "workspace_resume", name="mcp-net"))["state"] == "running"
            assert (await call(s, "workspace_exec", name="mcp-net", command="cat /tmp/state"))["stdout"] \
                == "before\n"

            # A client that asks for no network gets none.
            await call(s, "workspace_create", name="mcp-none", image=image, network="none")
            links = await call(s, "workspace_exec", name="mcp-none", command="ls /sys/class/net")
            assert links["stdout"].split() == ["lo"], links
            await call(s, "workspace_delete", name="mcp-none")
            await call(s, "workspace_delete", name="mcp-net")

    with loopback_http_server({"x": b"from the loopback server\n"}) as port:
        asyncio.run(main(port))


def test_a_cancelled_or_abandoned_exec_has_its_guest_command_killed(microagent_bin: str, state_dir: str,
                                                                    image: str) -> None:
    async def ps() -> str:
        return await asyncio.to_thread(guest_processes, microagent_bin, state_dir, "mcp-cancel")

    async def main() -> None:
        async with session(microagent_bin, state_dir) as s:
            msg = await tool_error(s, "workspace_cp", name="x", direction="toGuest", hostPath="a",
                                   guestPath="/root")
            assert "--files-dir" in msg, msg
            await call(s, "workspace_create", name="mcp-cancel", image=image)
            # notifications/cancelled: the mcp client sends it when the awaiting task is cancelled.
            task = asyncio.ensure_future(
                s.call_tool("workspace_exec", {"name": "mcp-cancel", "command": "sleep 600"}))
            await until(ps, lambda out: "sleep 600" in out)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(ps, lambda out: "sleep 600" not in out)
            # The server still serves.
            assert (await call(s, "workspace_exec", name="mcp-cancel", command="echo ok"))["stdout"] == "ok\n"

            # Snapshot and fork: the fork goes on from the snapshot's memory
            # (a tmpfs file and a running process), with its own disk.
            await call(s, "workspace_exec", name="mcp-cancel",
                       command="echo 41 > /tmp/n; echo disk > /root/d; setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
            notes: List[str] = []

            async def on_progress(progress: float, total: Any, message: Any) -> None:
                notes.append(str(message))

            r = await s.call_tool("workspace_snapshot", {"name": "mcp-cancel", "tag": "t1"},
                                  progress_callback=on_progress)
            assert not r.is_error, r.content
            snap = r.structured_content
            assert snap is not None
            assert (snap["name"], snap["tag"], snap["diskOnly"], snap["memoryMib"]) == ("mcp-cancel", "t1", False, 512)
            assert any("pausing mcp-cancel" in n for n in notes), notes
            notes.clear()
            r = await s.call_tool("workspace_fork", {"name": "mcp-fork", "source": "mcp-cancel", "tag": "t1"},
                                  progress_callback=on_progress)
            assert not r.is_error, r.content
            assert r.structured_content is not None and r.structured_content["state"] == "running"
            assert any("running" in n for n in notes), notes
            got = await call(s, "workspace_exec", name="mcp-fork", command="cat /tmp/n /root/d; pidof sleep")
            assert got["stdout"].startswith("41\ndisk\n") and got["stdout"].split()[-1].isdigit(), got
            await call(s, "workspace_exec", name="mcp-fork", command="echo fork > /root/d")
            assert (await call(s, "workspace_exec", name="mcp-cancel", command="cat /root/d"))["stdout"] == "disk\n"
            assert "mcp-fork" in [w["name"] for w in (await call(s, "workspace_list"))["workspaces"]]
            msg = await tool_error(s, "workspace_fork", name="mcp-fork2", source="mcp-cancel", tag="nope")
            assert "nope" in msg, msg
            subprocess.run([microagent_bin, "--state-dir", state_dir, "create", "foreign", "--image", image],
                           check=True, capture_output=True)
            msg = await tool_error(s, "workspace_fork", name="mcp-fork3", source="foreign", tag="t1")
            assert "no workspace named" in msg, msg
            subprocess.run([microagent_bin, "--state-dir", state_dir, "delete", "foreign"], check=True)
            await call(s, "workspace_delete", name="mcp-fork")
            # The source continues from its snapshot too, after a halt.
            await call(s, "workspace_exec", name="mcp-cancel", command="echo 42 > /tmp/n")
            await call(s, "workspace_halt", name="mcp-cancel")
            restored = await call(s, "workspace_start", name="mcp-cancel", fromSnapshot="t1")
            assert restored["state"] == "running"
            assert (await call(s, "workspace_exec", name="mcp-cancel", command="cat /tmp/n"))["stdout"] == "41\n"
            await call(s, "workspace_exec", name="mcp-cancel", command="kill $(pidof sleep)")

        # A client that goes away mid-exec (no cancellation sent: its pipe
        # just closes): the server exits and the command dies with it.
        params = server(microagent_bin, state_dir)
        proc = subprocess.Popen([params.command, *params.args], env=params.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        for message in [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "pipe", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "workspace_exec", "arguments": {"name": "mcp-cancel", "command": "sleep 601"}}},
        ]:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1
        await until(ps, lambda out: "sleep 601" in out)
        proc.stdin.close()
        assert await asyncio.to_thread(proc.wait, 60) == 0
        await until(ps, lambda out: "sleep 601" not in out)
        subprocess.run([microagent_bin, "--state-dir", state_dir, "delete", "--force", "mcp-cancel"], check=True)

    asyncio.run(main())
