"""The embedded Redis's data-dir ownership (`queues/takeover.py`) on fake probes: no process is
started, signalled or asked; the owner file is a real file in a temporary dir."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dash_ray.queues.takeover import DataDirOwner, alive, auth_command, port_free

pytestmark = pytest.mark.unit


class Probes:
    """What the owner decides from: live pids, the pid a Redis on a port answers as, command lines."""

    def __init__(self, live: set[int] | None = None, answers: dict[int, int] | None = None,
                 commands: dict[int, str] | None = None, busy: set[int] | None = None) -> None:
        self.live, self.answers, self.commands, self.busy = live or set(), answers or {}, commands or {}, busy or set()
        self.stopped: list[int] = []
        self.asked: list[tuple[int, str]] = []

    def owner(self, data_dir: Path) -> DataDirOwner:
        def answers_as(port: int, password: str) -> int | None:
            self.asked.append((port, password))
            return self.answers.get(port)

        def stop(pid: int, timeout_s: float) -> None:
            self.stopped.append(pid)
            self.live.discard(pid)

        owner = DataDirOwner(data_dir, is_alive=self.live.__contains__, answers_as=answers_as,
                             command_of=lambda pid: self.commands.get(pid, ""), stop=stop,
                             is_free=lambda port: port not in self.busy)
        owner.PORT_WAIT_S = 0.05
        return owner


def test_the_owner_file_records_pid_and_port_and_a_stopped_server_keeps_its_port(tmp_path: Path) -> None:
    owner = Probes().owner(tmp_path)
    assert owner.read() is None
    owner.write(123, 6400)
    assert owner.read() == (123, 6400) and (tmp_path / "redis.owner").read_text() == "123 6400\n"
    owner.write(0, 6400)
    assert owner.read() == (0, 6400)
    (tmp_path / "redis.owner").write_text("garbage\n")
    assert owner.read() is None


def test_no_owner_file_changes_nothing(tmp_path: Path) -> None:
    probes = Probes()
    assert probes.owner(tmp_path).take_over_or_clear("pw", 0) == (0, None)
    assert probes.owner(tmp_path).take_over_or_clear("pw", 7000) == (7000, None)
    assert not probes.asked and not probes.stopped


def test_a_server_that_answers_as_the_recorded_process_is_taken_over(tmp_path: Path) -> None:
    probes = Probes(live={42}, answers={6400: 42}, commands={42: "redis-server 127.0.0.1:6400"})
    owner = probes.owner(tmp_path)
    owner.write(42, 6400)
    assert owner.take_over_or_clear("secret", 0) == (6400, 42)
    assert owner.take_over_or_clear("secret", 7000) == (6400, 42)  # its port wins over the one asked for
    assert probes.asked[0] == (6400, "secret") and not probes.stopped


def test_a_recorded_redis_that_does_not_answer_is_stopped_and_its_port_reused(tmp_path: Path) -> None:
    probes = Probes(live={42}, answers={6400: 99}, commands={42: "/usr/bin/redis-server /d/redis.conf"})
    owner = probes.owner(tmp_path)
    owner.write(42, 6400)
    assert owner.take_over_or_clear("pw", 0) == (6400, None)
    assert probes.stopped == [42]


def test_a_recorded_pid_that_is_no_redis_now_is_left_alone(tmp_path: Path) -> None:
    probes = Probes(live={42}, commands={42: "python my_app.py"})
    owner = probes.owner(tmp_path)
    owner.write(42, 6400)
    assert owner.take_over_or_clear("pw", 0) == (6400, None) and not probes.stopped
    assert owner.take_over_or_clear("pw", 7000) == (7000, None)  # a port asked for is kept


def test_a_recorded_port_still_taken_is_given_up_for_any(tmp_path: Path) -> None:
    probes = Probes(busy={6400})
    owner = probes.owner(tmp_path)
    owner.write(0, 6400)  # stopped cleanly, but something else listens there now
    assert owner.take_over_or_clear("pw", 0) == (0, None)
    probes.busy.clear()
    assert owner.take_over_or_clear("pw", 0) == (6400, None)


def test_the_real_probes_on_this_process_and_a_socket() -> None:
    assert alive(os.getpid())
    assert auth_command("") == b"" and auth_command("pw") == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_free(s.getsockname()[1])
