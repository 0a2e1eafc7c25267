"""The client's command line against a running `dash-ray up`: exit codes, --json, bars in a terminal."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

# The CLI over the client and the gateway: nothing in it depends on which Redis server runs it.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.once]


def dash(up: dict[str, Any], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dash_ray.cli", *args], env=up["env"], capture_output=True,
                          text=True, timeout=timeout)


def test_submit_wait_json_status_jobs_queues_download(up: dict[str, Any], tmp_path: Path) -> None:
    done = dash(up, "submit", "generation", "a red fox", "--steps", "2", "--width", "64", "--height", "64",
                "--seed", "3", "--num-images", "2", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["status"] == "completed" and len(view["result"]["images"]) == 2
    status = dash(up, "status", view["id"], "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == view["id"]
    jobs = dash(up, "jobs", "--queue", "generation", "--limit", "5", "--json")
    assert view["id"] in [j["id"] for j in json.loads(jobs.stdout)]
    queues = dash(up, "queues", "--json")
    assert {"training", "upscaling", "generation"} <= {q["name"] for q in json.loads(queues.stdout)}
    files = dash(up, "download", view["id"], str(tmp_path / "out"), "--json")
    assert files.returncode == 0, files.stderr
    paths = [Path(p) for p in json.loads(files.stdout)]
    assert len(paths) == 2 and all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    plain = dash(up, "status", view["id"])
    assert plain.returncode == 0 and "completed" in plain.stdout


def test_a_failed_job_exits_1_and_a_refused_request_exits_2(up: dict[str, Any], tmp_path: Path) -> None:
    import base64

    fake = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8
    broken = tmp_path / "broken.png"
    broken.write_bytes(fake)
    refused_upload = dash(up, "submit", "upscaling", str(broken), "--json")  # a file is uploaded, and checked
    assert refused_upload.returncode == 2 and "could not be read" in refused_upload.stderr
    inline = "data:image/png;base64," + base64.b64encode(fake).decode()  # passes the gateway, fails to decode
    failed = dash(up, "submit", "upscaling", inline, "--wait", "--json")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["status"] == "failed"
    assert "httpx" not in failed.stderr  # no request log lines for a command-line user
    refused = dash(up, "submit", "generation", "a cat", "--steps", "100000")
    assert refused.returncode == 2 and "steps" in refused.stderr
    missing = dash(up, "status", "no-such-job", "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["status"] == 404
    bad_token = subprocess.run([sys.executable, "-m", "dash_ray.cli", "queues", "--token", "nope"], env=up["env"],
                               capture_output=True, text=True, timeout=60)
    assert bad_token.returncode == 2 and "401" in bad_token.stderr


def test_a_cancelled_job_ends_its_wait_with_exit_1_and_can_be_retried(up: dict[str, Any], tmp_path: Path) -> None:
    img = tmp_path / "in.png"
    import base64

    from tests.workers.conftest import png_data_url

    img.write_bytes(base64.b64decode(png_data_url().split(",", 1)[1]))
    waiting = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "submit", "training", "cli-lora", "sks",
                                str(img), str(img), "--epochs", "500", "--resolution", "64", "--rank", "4",
                                "--wait", "--json", "--job-id", "cli-lora"],
                               env=up["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = dash(up, "status", "cli-lora", "--json")
            if st.returncode == 0 and json.loads(st.stdout)["status"] == "active":
                break
            time.sleep(0.5)
        cancel = dash(up, "cancel", "cli-lora", "--json")
        assert cancel.returncode == 0, cancel.stderr
        out, _err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1 and json.loads(out)["status"] == "cancelled"
    retried = dash(up, "retry", "cli-lora", "--json")
    assert retried.returncode == 0 and json.loads(retried.stdout)["status"] in ("waiting", "active")
    assert dash(up, "cancel", "cli-lora").returncode == 0


def test_watch_draws_progress_bars_in_a_terminal(up: dict[str, Any]) -> None:
    submitted = [json.loads(dash(up, "submit", "generation", f"a bird {i}", "--steps", "20", "--width", "64",
                                 "--height", "64", "--json").stdout)["id"] for i in range(2)]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal's size
    proc = subprocess.Popen([sys.executable, "-m", "dash_ray.cli", "watch", *submitted], env=up["env"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break  # the command ended and closed the terminal
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert "100%|" in text and "\u2588" in text, text[-2000:]  # a full bar, drawn with block characters
    assert all(job_id[:12] in text for job_id in submitted)
    assert "\r" in text or "\x1b[" in text  # redrawn in place, as in a terminal


def test_a_schedule_from_the_cli_runs_every_2_s_on_ray_and_stops_when_removed(up: dict[str, Any]) -> None:
    from dash_ray.client import Client

    added = dash(up, "schedule", "add", "tick", "sleep", "--data", '{"durationS": 0.05}', "--every", "2", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["id"] == "tester.tick"

    def runs(c: Any) -> list[Any]:
        return [j for j in c.jobs(queue="sleep", limit=50) if j.id.startswith("repeat:tester.tick:")]

    with Client(up["base"], up["token"]) as c:
        deadline = time.monotonic() + 60
        while len([j for j in runs(c) if j.status == "completed"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)  # polling the history (bounded): the runs come every 2 s
        # each run's id ends with the time it was due (ms)
        due = sorted(int(j.id.rsplit(":", 1)[1]) for j in runs(c) if j.status == "completed")
        assert len(due) >= 3, [(j.id, j.status) for j in runs(c)]
        assert [b - a for a, b in itertools.pairwise(due[:3])] == [2000, 2000]  # three runs, 2 s apart
        listed = dash(up, "schedule", "ls", "--json")
        assert [s["name"] for s in json.loads(listed.stdout)] == ["tick"]
        removed = dash(up, "schedule", "rm", "tick")
        assert removed.returncode == 0 and "removed tick" in removed.stdout, removed.stderr
        made = {j.id for j in runs(c)}
        time.sleep(4.5)  # two periods with no schedule: no run may come
        assert {j.id for j in runs(c)} <= made
        assert dash(up, "schedule", "rm", "tick").returncode == 2  # gone: 404
