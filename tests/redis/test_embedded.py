"""The embedded Redis keeps its jobs across a restart (append-only file in its data dir)."""

from __future__ import annotations

from pathlib import Path

from dash_ray.queues import EmbeddedRedis, JobStore, connect


async def test_restart_keeps_jobs(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.start()
    pid = server.pid
    try:
        r = connect(server.url)
        store = JobStore(r, queues=("generation",))
        await store.add("generation", {"userId": "alice", "prompt": "persist me", "jobId": "durable"})
        await r.aclose()
    finally:
        server.stop()
    assert not Path(f"/proc/{pid}").exists()
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        r = connect(server.url)
        store = JobStore(r, queues=("generation",))
        view = await store.get("durable")
        assert view.status == "waiting" and view.data["prompt"] == "persist me"
        assert (await store.counts("generation"))["waiting"] == 1
        await r.aclose()
    finally:
        server.stop()


def test_one_server_per_data_dir_taken_over_after_its_owner_dies(tmp_path: Path) -> None:
    """An owner killed without stopping its Redis: the next one on the data dir takes the running
    server over (same port, same process) instead of starting a second one on the same AOF; once
    that server is gone too, a new one starts on the same port."""
    import os
    import signal

    first = EmbeddedRedis(tmp_path, fsync="always", maxmemory="64mb")
    first.start()
    pid, port = first.pid, first.port
    orphan, first.proc = first.proc, None  # as if its owner was SIGKILLed: nobody stops it
    second = EmbeddedRedis(tmp_path)
    try:
        second.start()
        assert (second.pid, second.port) == (pid, port)
        assert second.proc is None  # adopted, not started
    finally:
        second.stop()
    assert orphan is not None and orphan.wait(5) is not None  # it ended (and is reaped here)
    third = EmbeddedRedis(tmp_path)
    third.start()
    try:
        assert third.port == port and third.pid != pid
        hung, third.proc = third.proc, None
        os.kill(third.pid or hung.pid, signal.SIGSTOP)  # type: ignore[union-attr]  # a hung server
        fourth = EmbeddedRedis(tmp_path)
        fourth.start()  # stops the hung one (SIGTERM, then SIGKILL), starts its own
        assert hung is not None and hung.wait(15) is not None
        assert fourth.pid != hung.pid and fourth.port == port
        fourth.stop()
    finally:
        third.stop()


def test_the_embedded_redis_is_private_to_its_owner(tmp_path: Path) -> None:
    """From the outside, as another local process would try: no PING without the password, the
    password nowhere on a command line, the data dir 0700 and the password file 0600, and no
    CONFIG / MODULE / DEBUG even with the password."""
    import os
    import socket
    import stat

    import redis as sync_redis

    from dash_ray.queues.embedded import RENAMED_AWAY

    data = tmp_path / "data"
    server = EmbeddedRedis(data)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(128).startswith(b"-NOAUTH")
        assert server.password and server.password not in Path(f"/proc/{server.pid}/cmdline").read_text()
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        for name in ("redis.password", "redis.conf"):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600
        assert server.password not in server.display_url and server.password in server.url
        r = sync_redis.Redis.from_url(server.url)
        assert r.ping()
        for command in ("CONFIG GET requirepass", "MODULE LIST", "DEBUG SLEEP 0"):
            try:
                r.execute_command(*command.split())
                raise AssertionError(f"{command} was accepted")
            except sync_redis.ResponseError as exc:
                assert "unknown command" in str(exc)
        assert "CONFIG" in RENAMED_AWAY
        r.close()
    finally:
        server.stop()
    again = EmbeddedRedis(data)  # the same password next time, so clients of the data dir keep working
    again.start()
    try:
        assert again.password == server.password and sync_redis.Redis.from_url(again.url).ping()
    finally:
        again.stop()


def test_dash_ray_redis_serves_a_cluster_head_privately(tmp_path: Path) -> None:
    """`dash-ray redis` as cluster.yaml's head runs it: it listens on the head's address (here
    127.0.0.2) and 127.0.0.1, wants its password, keeps an append-only file, hands REDIS_URL over
    in a 0600 file, and stops on SIGTERM."""
    import os
    import signal
    import stat
    import subprocess
    import sys
    import time

    import redis as redis_sync

    from dash_ray.testing import free_port

    port = free_port()
    env_file = tmp_path / "cluster.env"
    proc = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "redis", "--host", "127.0.0.2", "--port",
                             str(port), "--data-dir", str(tmp_path / "redis"), "--env-file", str(env_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not env_file.exists() or not env_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        url = env_file.read_text().strip().removeprefix("REDIS_URL=")
        assert url.startswith("redis://:") and url.endswith(f"@127.0.0.2:{port}/0")
        password = url.split(":")[2].split("@")[0]
        assert password not in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
        for host in ("127.0.0.2", "127.0.0.1"):
            r = redis_sync.Redis(host=host, port=port, password=password)
            assert r.ping() and r.info("persistence")["aof_enabled"] == 1
            try:
                r.execute_command("CONFIG", "GET", "dir")
                raise AssertionError("CONFIG answered")
            except redis_sync.ResponseError as exc:
                assert "unknown command" in str(exc)
        try:
            redis_sync.Redis(host="127.0.0.2", port=port).ping()
            raise AssertionError("answered without the password")
        except redis_sync.AuthenticationError:
            pass
        server_pid = int((tmp_path / "redis" / "redis.owner").read_text().split()[0])
        assert server_pid > 0
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
    assert not Path(f"/proc/{server_pid}").exists()  # the server is gone with it


def test_the_embedded_server_is_a_current_redis_when_one_is_installed(tmp_path: Path) -> None:
    """DASH_REDIS_SERVER=auto prefers a redis-server 7+ on PATH to the bundled 6.2; `bundled`
    keeps the bundled one; a path that is not a program is refused."""
    import shutil

    import pytest
    import redis as sync_redis

    from dash_ray.queues.embedded import _bundled, _version, redis_server_binary

    on_path = shutil.which("redis-server")
    if on_path and _version(on_path) >= (7, 0):
        assert redis_server_binary("auto") == on_path
        server = EmbeddedRedis(tmp_path / "auto")
        server.start()
        try:
            r = sync_redis.Redis.from_url(server.url)
            assert r.info("server")["redis_version"].split(".")[0] >= "7"
            r.close()
        finally:
            server.stop()
    if _bundled():
        assert redis_server_binary("bundled") == _bundled()
    with pytest.raises(RuntimeError, match="DASH_REDIS_SERVER"):
        redis_server_binary(str(tmp_path / "nothing"))
