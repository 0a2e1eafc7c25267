"""The Lua loader (queues/lua.py) without Redis: headers, includes, names, generated constants."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dash_ray.models.status import FINAL
from dash_ray.queues import lua
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import Script, ScriptError

LUA_DIR = Path(lua.__file__).parent / "lua"
CONSTANTS: dict[str, Any] = {"maxlen": 1000, "ttl": 60, "logs_max": 100, "keep": 10, "ns": "p:__dash__:", "history_max": 5,
             "recent_max": 7, "dead_max": 3}
SCRIPTS = {s.name: s for s in (lua.CREATE, lua.REOPEN, lua.RATE, lua.USAGE, lua.FAIR_PRUNE, lua.ADOPT_SCAN, lua.ADOPT, lua.EVENT,
                               lua.FINISH, lua.CHECKPOINT, lua.HOOK_CLAIM, lua.HOOK_SETTLE, lua.HOOK_REPLAY, lua.HOLD, lua.UNHOLD, lua.PEAK, lua.TAKE, lua.MOVE,
                               lua.REMEMBER, lua.AGE)}


@pytest.fixture
def files(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Script and include files the loader reads instead of queues/lua/ (path without .lua -> text)."""
    fake: dict[str, str] = {}
    real = lua._file
    monkeypatch.setattr(lua, "_file", lambda path: fake.get(path) if path in fake else real(path))
    lua._include.cache_clear()
    yield fake
    lua._include.cache_clear()


def header(keys: str = "", args: str = "") -> str:
    return f"--[[\n  Input:\n{keys}\n{args}\n  Output:\n    nothing\n]]\n"


def test_every_file_is_a_script_or_a_used_include() -> None:
    names = {p.stem for p in LUA_DIR.glob("*.lua")}
    assert names == {*SCRIPTS, "position", "extend_locks", "peek_ready"}
    texts = [p.read_text() for p in LUA_DIR.rglob("*.lua")]
    for inc in (LUA_DIR / "includes").glob("*.lua"):
        assert any(f'@include "includes/{inc.stem}"' in t or f'@include "{inc.stem}"' in t for t in texts), inc


def test_the_python_api_of_the_scripts_is_unchanged() -> None:
    assert lua.CHECKPOINT.keys == ("job", "lock", "yield") and lua.CHECKPOINT.args == ("token", "path")
    assert lua.FINISH.keys == ("job", "events", "finished", "open", "cancel", "durations", "bull_job", "hooks",
                               "hook_bodies", "kept", "settle")
    assert lua.FINISH.args == ("channel", "frame", "fields", "job_id", "now_ms", "finished_on", "bucket", "seconds")
    assert lua.CREATE.keys[:2] == ("job", "events") and lua.CREATE.keys[-6:] == ("sizes", "kept", "rate", "start_by", "cache",
                                                                               "fair_usage")
    assert len(lua.CREATE.keys) == 22 and lua.CREATE.args[-3:] == ("data", "after", "half_life_ms")
    assert lua.RATE.keys == ("rate",) and lua.RATE.args == ("rate_limit", "rate_window_ms", "now_ms")
    keys, args = lua.CHECKPOINT.pack({"yield": "y", "job": "j", "lock": "l"}, {"path": "p", "token": "t"})
    assert (keys, args) == (["j", "l", "y"], ["t", "p"])
    assert isinstance(lua.POSITION, str) and isinstance(lua.EXTEND_LOCKS, str)


def test_names_become_locals_from_the_header_and_after_shifts_them() -> None:
    text = lua.CREATE.text(after=(3, 2), prelude="local function bull_add() return 1 end", **CONSTANTS)
    assert "local K_job = KEYS[4]" in text and "local K_kept = KEYS[21]" in text
    assert "local A_channel = ARGV[3]" in text and "local A_max_high = ARGV[17]" in text
    assert "KEYS[" not in lua.CREATE.body and "ARGV[" not in re.sub(r"--\[\[.*?\]\]", "", lua.CREATE.body, flags=re.S)


def test_each_script_ships_only_its_includes_each_once_dependencies_first() -> None:
    create = lua.CREATE.text(**CONSTANTS)
    for fn in ("emit", "refusal", "reap_kept", "charge", "live_again", "job_key", "queue_position", "level_head",
               "rate_take"):
        assert create.count(f"local function {fn}(") == 1, fn
    assert create.index("local function reap_kept(") < create.index("local function refusal(")
    assert create.index("local function job_key(") < create.index("local function refusal(")
    checkpoint = lua.CHECKPOINT.text(**CONSTANTS)
    assert "emit" not in checkpoint and "refusal" not in checkpoint and "reap_kept" not in checkpoint
    assert len(checkpoint.splitlines()) < 25
    claim = lua.HOOK_CLAIM.text(**CONSTANTS)
    assert "local function" not in claim and len(claim.splitlines()) < 30
    # the text bakes in the constants it uses, and only those
    assert "local DEAD_MAX" not in claim and "local NS" not in checkpoint
    assert "local NS = \"p:__dash__:\"" in lua.FINISH.text(**CONSTANTS)


def test_a_shared_include_is_pulled_in_once(files: dict[str, str]) -> None:
    files["includes/t_leaf"] = "--[[ leaf ]]\nlocal function leaf() return 1 end\n"
    files["includes/t_left"] = '--- @include "t_leaf"\nlocal function left() return leaf() end\n'
    files["includes/t_right"] = '--- @include "t_leaf"\nlocal function right() return leaf() end\n'
    files["t_diamond"] = header() + '--- @include "includes/t_left"\n--- @include "includes/t_right"\nreturn left() + right()\n'
    text = lua.load("t_diamond").text()
    assert text.count("local function leaf()") == 1
    assert text.index("leaf()") < text.index("local function left()") < text.index("local function right()")
    assert "@include" not in text and "--[[ leaf ]]" not in text


def test_a_misspelled_key_fails_at_load(files: dict[str, str]) -> None:
    files["t_typo"] = header("    KEYS[1] job  the record") + "return redis.call('HGET', K_jbo, 'status')\n"
    with pytest.raises(ScriptError, match=r"'t_typo'.*K_jbo.*KEYS \(job\)"):
        lua.load("t_typo")


def test_an_undeclared_argument_fails_also_in_an_include_and_inline() -> None:
    with pytest.raises(ScriptError, match=r"'x'.*A_tokn"):
        Script("x", ("lock",), ("token",), "return redis.call('GET', K.lock) == A.tokn or A.token")
    # emit writes the job's state: a script that includes it must declare what it uses
    with pytest.raises(ScriptError, match=r"'y'.*K_events \(in include 'includes/emit'\)"):
        Script("y", ("job",), ("frame", "fields", "channel", "job_id"), '--- @include "includes/emit"\nreturn emit(-1)')


def test_names_in_comments_and_strings_are_not_uses() -> None:
    with pytest.raises(ScriptError, match="declares K_job, which the script never uses"):
        Script("z", ("job",), (), "-- K_job\nreturn 'K_job'")


def test_a_declared_name_never_used_fails_unless_marked_unused(files: dict[str, str]) -> None:
    files["t_unused"] = header("    KEYS[1] job\n    KEYS[2] lock", "    ARGV[1] token") + "return {K_job, A_token}\n"
    with pytest.raises(ScriptError, match=r"'t_unused'.*K_lock"):
        lua.load("t_unused")
    files["t_marked"] = header("    KEYS[1] job\n    KEYS[2] lock  (unused: passed for symmetry)") + "return K_job\n"
    assert lua.load("t_marked").keys == ("job", "lock")


def test_a_missing_include_or_a_cycle_fails(files: dict[str, str]) -> None:
    files["t_missing"] = header() + '--- @include "includes/no_such"\nreturn 1\n'
    with pytest.raises(ScriptError, match=r"'t_missing'.*includes/no_such"):
        lua.load("t_missing")
    files["includes/t_a"] = '--- @include "t_b"\nlocal function a() end\n'
    files["includes/t_b"] = '--- @include "t_a"\nlocal function b() end\n'
    files["t_cycle"] = header() + '--- @include "includes/t_a"\nreturn 1\n'
    with pytest.raises(ScriptError, match="cycle"):
        lua.load("t_cycle")


def test_headers_are_required_and_in_order(files: dict[str, str]) -> None:
    files["t_noheader"] = "return 1\n"
    with pytest.raises(ScriptError, match="header"):
        lua.load("t_noheader")
    files["t_order"] = header("    KEYS[2] job") + "return K_job\n"
    with pytest.raises(ScriptError, match=r"KEYS\[2\] job is out of order"):
        lua.load("t_order")


def test_keys_and_argv_are_read_by_name_except_a_declared_rest() -> None:
    with pytest.raises(ScriptError, match="KEYS is read directly"):
        Script("raw", ("job",), (), "return {K_job, KEYS[2]}")
    with pytest.raises(ScriptError, match="ARGV is read directly"):
        Script("raw", ("job",), (), "return {K_job, ARGV[1]}")
    assert Script("rest", ("job",), (), "return {K_job, ARGV[1]}", rest=True)
    assert "for i = 3, #ARGV, 2 do" in lua.EXTEND_LOCKS and "local A_lock_ms = ARGV[2]" in lua.EXTEND_LOCKS


def test_a_constant_not_given_fails_when_the_text_is_made() -> None:
    with pytest.raises(ScriptError, match=r"'finish'.*KEEP"):
        lua.FINISH.text(**{k: v for k, v in CONSTANTS.items() if k != "keep"})


def test_final_is_generated_from_models_status() -> None:
    found = lua._include("includes/final")
    assert found is not None
    m = re.search(r"local FINAL = \{(.*)\}", found[0])
    assert m is not None
    assert {x.split("=")[0].strip() for x in m.group(1).split(",")} == set(FINAL)
    assert all(v.strip() == "true" for x in m.group(1).split(",") for v in [x.split("=")[1]])
    # no final-state check is written out by hand in Lua any more
    for path in LUA_DIR.rglob("*.lua"):
        assert not re.search(r"'(completed|failed|cancelled)'", path.read_text()), path


def test_key_shapes_in_lua_are_those_of_keys() -> None:
    found = lua._include("includes/keys")
    assert found is not None
    shapes = re.findall(r"local function (\w+)\(id\) return NS \.\. '([^']*)' \.\. id(?: \.\. '([^']*)')? end", found[0])
    assert {s[0] for s in shapes} == set(lua._KEY_SHAPES)
    k = Keys("pfx")
    for name, head, tail in shapes:
        assert k.ns + head + "ID" + tail == lua._KEY_SHAPES[name](k, "ID"), name
    # and no script concatenates a key name of ours by hand
    for path in LUA_DIR.rglob("*.lua"):
        assert "NS .." not in path.read_text(), path
