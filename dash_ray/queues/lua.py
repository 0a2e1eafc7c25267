"""The Lua scripts of dash-ray's own keys (BullMQ's scripts stay BullMQ's), and their one loader.

Each script is a file, `queues/lua/<name>.lua`, BullMQ style: a header comment declares its KEYS
and ARGV by name, in order (`KEYS[1] job ...`, `ARGV[1] channel ...`), and its Output; lines
`--- @include "includes/emit"` pull in the shared functions it uses (each once, an include's own
includes first). A script reads its keys and arguments as `K_<name>` / `A_<name>`: the loader
writes `local K_job = KEYS[1]`... from the header. Loading fails (`ScriptError`, at import) on a
`K_`/`A_` name the header does not declare, a declared name the script never uses (unless its
header line says `(unused...)`), a missing include, and `KEYS`/`ARGV` read directly (allowed only
for a header's `ARGV[n...]`: arguments after the named ones). Callers pass keys and arguments by
name (`Script.pack`), in the header's order.

Two includes are generated here from the Python that owns them, so Lua cannot disagree with it:
`includes/final` (`FINAL[status]`: the final statuses of `models/status.py`) and `includes/keys`
(`job_key(id)`, ...: the shapes of `Keys` a script needs for ids it reads itself; every other key
is built by `Keys` in Python and passed in KEYS).

Constants of a deployment (stream length, retention, key namespace `NS`) are baked into the text
by `Script.text` as upper-case locals, so a call sends few arguments; a constant the script uses
that the caller does not give fails there.

The event frame: Python sends the event's JSON without its closing brace (`A_frame`); `emit`
(`includes/emit.lua`) appends `,"queuePosition":N` (when asked and the job is waiting) and
`,"seq":N}`. The frame is stored in the job's replay stream and published on its channel, and the
job hash takes the state fields in `A_fields` (key, value, ... joined by \\x1f).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from dash_ray.models.status import CANCELLING, FINAL, Status
from dash_ray.queues.keys import Keys

__all__ = ["ADOPT", "ADOPT_SCAN", "AGE", "CHECKPOINT", "CREATE", "EVENT", "EXTEND_LOCKS", "FAIR_PRUNE", "FINISH", "HOLD",
           "HOOK_CLAIM", "HOOK_REPLAY", "HOOK_SETTLE", "MOVE", "PEAK", "PEEK_READY", "POSITION", "RATE", "REMEMBER", "REOPEN", "TAKE", "UNHOLD", "USAGE", "Script",
           "ScriptError", "load", "with_bull_add", "with_bull_take"]


class ScriptError(ValueError):
    """A Lua script that cannot load: the message names the script and what is wrong."""


@dataclass(frozen=True)
class Script:
    """A Lua script with named KEYS and ARGV (made by `load` from its file; a body given inline may
    also write `K.<name>` / `A.<name>`). Checked when made: see the module's docstring."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    body: str
    rest: bool = False  # arguments after the named ones, read as ARGV[i] (header: `ARGV[n...]`)
    unused: frozenset[str] = frozenset()  # declared names the script may leave unused (`K_x`, `A_x`)
    _parts: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parts", _resolve(self))

    def text(self, *, after: tuple[int, int] = (0, 0), prelude: str = "", **constants: Any) -> str:
        """The script's source: the constants it uses, its keys and arguments as locals, its
        includes and its body.

        `after` = (keys, args) that come before this script's own (another script's, run by
        `prelude`, which is inserted verbatim before the body)."""
        nk, na = after
        if self.rest and after != (0, 0):
            raise ScriptError(f"Lua script {self.name!r}: reads ARGV directly, so nothing can come before its own")
        *includes, body = self._parts
        wanted = _constants(self._parts)
        given = {n.upper(): v for n, v in constants.items()}
        missing = sorted(wanted - given.keys())
        if missing:
            raise ScriptError(f"Lua script {self.name!r} uses the constant(s) {', '.join(missing)}, which were not given")
        lines = [f"-- {self.name}"]
        lines += [f"local {n} = {_lua(given[n])}" for n in sorted(wanted)]
        lines += [f"local K_{n} = KEYS[{i}]" for i, n in enumerate(self.keys, nk + 1)]
        lines += [f"local A_{n} = ARGV[{i}]" for i, n in enumerate(self.args, na + 1)]
        return "\n".join([*lines, *includes, prelude, body]) if prelude else "\n".join([*lines, *includes, body])

    def pack(self, keys: Mapping[str, str], args: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV in the script's order from name -> value maps (every name required)."""
        return [keys[n] for n in self.keys], [args[n] for n in self.args]


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if not all(c.isalnum() or c in "_.-:" for c in text):
        raise ValueError(f"unsafe Lua constant {text!r}")
    return f'"{text}"'


# ------------------------------------------------------------------ reading the files
_ROOT = "lua"  # under this package
_HEADER = re.compile(r"\A\s*--\[(=*)\[(.*?)\]\1\][ \t]*\n?", re.S)
_DECL = re.compile(r"^\s*(KEYS|ARGV)\[(\d+)\]\s+(\w+)[ \t]*(.*)$", re.M)
_REST = re.compile(r"^\s*(KEYS|ARGV)\[(\d+)\.\.\.\]", re.M)
_OUTPUT = re.compile(r"^\s*Output:", re.M)
_INCLUDE = re.compile(r'^---[ \t]*@include[ \t]+"([^"]+)"[ \t]*\n?', re.M)
_INLINE = re.compile(r"\b([KA])\.(\w+)")  # K.<name> / A.<name>, as inline bodies may write them
_NAME = re.compile(r"\b([KA])_(\w+)")
_RAW = re.compile(r"\b(KEYS|ARGV)\b")
_UPPER = re.compile(r"\b[A-Z][A-Z0-9_]*\b")
_LOCAL_UPPER = re.compile(r"\blocal\s+([A-Z][A-Z0-9_]*)\b")
# Comments and string literals, which say nothing about the names a script uses.
_NOISE = re.compile(r"""--\[(=*)\[.*?\]\1\]|--[^\n]*|\[(=*)\[.*?\]\2\]|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*\"""", re.S)


def _code(text: str) -> str:
    """`text` without its comments and string literals."""
    return _NOISE.sub(" ", text)


@cache
def _file(path: str) -> str | None:
    """A file under `queues/lua/` (path without `.lua`), or None."""
    f = resources.files(__package__ or "dash_ray.queues") / _ROOT
    for part in f"{path}.lua".split("/"):
        f = f / part
    return f.read_text(encoding="utf-8") if f.is_file() else None


def _final_lua() -> str:
    names = sorted(FINAL)
    assert all(n.isidentifier() for n in names)
    return (f"local FINAL = {{{', '.join(f'{n} = true' for n in names)}}}  -- models/status.py FINAL\n"
            f"local CANCELLING = '{CANCELLING}'  -- models/status.py CANCELLING\n"
            f"local COMPLETED = '{Status.COMPLETED.value}'  -- models/status.py Status.COMPLETED\n")


# Key shapes a script builds itself, for ids it reads from a stream or a set (the trim in finish,
# the scan in adopt_scan, the high-priority count in refusal, the job take found): Lua name -> the `Keys` method.
_KEY_SHAPES: dict[str, Callable[[Keys, str], str]] = {"job_key": Keys.job, "events_key": Keys.events,
                                                      "kept_key": Keys.kept, "channel_key": Keys.channel,
                                                      "cancel_key": Keys.cancel, "followers_key": Keys.followers,
                                                      "waiters_key": Keys.waiters, "deps_key": Keys.deps,
                                                      "parked_key": Keys.parked}


def _keys_lua() -> str:
    k = Keys("p")
    lines = []
    for name, method in _KEY_SHAPES.items():
        shape = method(k, "\0")
        head, _, tail = shape.removeprefix(k.ns).partition("\0")
        if not shape.startswith(k.ns) or not all(c.isalnum() or c in "_.-:" for c in head + tail):
            raise ScriptError(f"Keys.{method.__name__} has a shape Lua cannot build: {shape!r}")
        end = f" .. '{tail}'" if tail else ""
        lines.append(f"local function {name}(id) return NS .. '{head}' .. id{end} end  -- Keys.{method.__name__}")
    return "\n".join(lines) + "\n"


# Includes written here, not read from a file.
_GENERATED: dict[str, Callable[[], str]] = {"includes/final": _final_lua, "includes/keys": _keys_lua}


@cache
def _include(path: str) -> tuple[str, tuple[str, ...]] | None:
    """An include's text (its header comment and include lines dropped) and its own includes
    (paths under `queues/lua/`), or None if there is none."""
    make = _GENERATED.get(path)
    raw = make() if make else _file(path)
    if raw is None:
        return None
    text = _HEADER.sub("", raw, count=1)
    refs = tuple(posixpath.normpath(posixpath.join(posixpath.dirname(path), r)) for r in _INCLUDE.findall(text))
    return _INCLUDE.sub("", text), refs


def _resolve(script: Script) -> tuple[str, ...]:
    """The texts of the script's includes in the order they must come (each once, an include's
    own includes first), then its body; checks its names (see the module's docstring)."""
    fail = f"Lua script {script.name!r}"
    body = _INLINE.sub(r"\1_\2", script.body)
    order: list[str] = []
    texts: dict[str, str] = {}

    def visit(path: str, by: str, stack: tuple[str, ...]) -> None:
        if path in texts:
            return
        if path in stack:
            raise ScriptError(f"{fail}: includes form a cycle: {' -> '.join((*stack, path))}")
        found = _include(path)
        if found is None:
            raise ScriptError(f"{fail}: include {path!r} (from {by}) not found: no queues/lua/{path}.lua")
        text, refs = found
        for ref in refs:
            visit(ref, path, (*stack, path))
        texts[path] = text
        order.append(path)

    for ref in _INCLUDE.findall(body):
        visit(posixpath.normpath(ref), "the body", ())
    body = _INCLUDE.sub("", body)

    declared = {"K": script.keys, "A": script.args}
    for kind, names in declared.items():
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ScriptError(f"{fail}: {kind}_{sorted(dup)[0]} is declared twice")
    used: set[str] = set()
    for where, text in [*((f"include {p!r}", texts[p]) for p in order), ("the body", body)]:
        code = _code(text)
        for kind, name in _NAME.findall(code):
            if name not in declared[kind]:
                what = "KEYS" if kind == "K" else "ARGV"
                raise ScriptError(f"{fail}: {kind}_{name} (in {where}) is not in its header's {what} "
                                  f"({', '.join(declared[kind]) or 'none'})")
            used.add(f"{kind}_{name}")
        for raw in set(_RAW.findall(code)):
            if raw == "KEYS" or not script.rest:
                raise ScriptError(f"{fail}: {raw} is read directly (in {where}); use the names its header declares")
    for kind, names in declared.items():
        for name in names:
            if f"{kind}_{name}" not in used and f"{kind}_{name}" not in script.unused:
                raise ScriptError(f"{fail}: its header declares {kind}_{name}, which the script never uses")
    return (*(texts[p] for p in order), body)


def _constants(parts: tuple[str, ...]) -> set[str]:
    """The upper-case names the parts use and do not define: the constants `text` bakes in."""
    code = _code("\n".join(parts))
    return set(_UPPER.findall(code)) - set(_LOCAL_UPPER.findall(code)) - {"KEYS", "ARGV"}


def load(name: str) -> Script:
    """The script of `queues/lua/<name>.lua`, its keys and arguments read from its header."""
    raw = _file(name)
    if raw is None:
        raise ScriptError(f"Lua script {name!r}: no queues/lua/{name}.lua")
    header = _HEADER.match(raw)
    if header is None or not _OUTPUT.search(header.group(2)):
        raise ScriptError(f"Lua script {name!r}: its file must start with a --[[ ]] header declaring "
                          "its KEYS, ARGV and Output")
    decl: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    unused: set[str] = set()
    for what, i, var, note in _DECL.findall(header.group(2)):
        if int(i) != len(decl[what]) + 1:
            raise ScriptError(f"Lua script {name!r}: {what}[{i}] {var} is out of order (expected "
                              f"{what}[{len(decl[what]) + 1}])")
        decl[what].append(var)
        if note.startswith("(unused"):
            unused.add(f"{what[0]}_{var}")  # K_ / A_
    rest = {what for what, i in _REST.findall(header.group(2)) if int(i) == len(decl[what]) + 1}
    if "KEYS" in rest:
        raise ScriptError(f"Lua script {name!r}: KEYS must all be named")
    return Script(name, tuple(decl["KEYS"]), tuple(decl["ARGV"]), raw[header.end():], rest="ARGV" in rest,
                  unused=frozenset(unused))


def with_bull_add(bull_source: str, bull_keys: int, bull_args: int) -> str:
    """The prelude of CREATE that runs one of BullMQ's add scripts (its text unchanged, as the
    body of a function whose KEYS and ARGV are the first `bull_keys` / `bull_args` of ours)."""
    return (f"local function bull_add_script(KEYS, ARGV)\n{bull_source}\nend\n"
            f"local function bull_add()\n"
            f"  return bull_add_script({{unpack(KEYS, 1, {bull_keys})}}, {{unpack(ARGV, 1, {bull_args})}})\nend\n")


def with_bull_take(bull_source: str) -> str:
    """The prelude of TAKE that runs BullMQ's moveToActive (its text unchanged, as the body of a
    function whose KEYS and ARGV are the first 11 / 3 of ours) with the timestamp given."""
    return (f"local function bull_take_script(KEYS, ARGV)\n{bull_source}\nend\n"
            f"local function bull_take(now_ms)\n"
            f"  return bull_take_script({{unpack(KEYS, 1, 11)}}, {{ARGV[1], now_ms, ARGV[3]}})\nend\n")


# The lifecycle's scripts (queues/lifecycle.py), each described in its file's header.
CREATE = load("create")  # run with BullMQ's add as its prelude (`with_bull_add`)
TAKE = load("take")  # run with BullMQ's moveToActive as its prelude (`with_bull_take`)
REOPEN = load("reopen")
RATE = load("rate")  # the submission rate alone (queues/accounts.py); CREATE counts it itself
USAGE = load("usage")
FAIR_PRUNE = load("fair_prune")
ADOPT_SCAN = load("adopt_scan")
ADOPT = load("adopt")
EVENT = load("event")
FINISH = load("finish")
CHECKPOINT = load("checkpoint")
MOVE = load("move")
REMEMBER = load("remember")
PEAK = load("peak")
AGE = load("age")
HOLD = load("hold")  # GPU shares (queues/shares.py)
UNHOLD = load("unhold")
# The webhook outbox's (queues/outbox.py).
HOOK_CLAIM = load("hook_claim")
HOOK_SETTLE = load("hook_settle")
HOOK_REPLAY = load("hook_replay")
# Reads and lock renewal, registered as plain text (KEYS and ARGV in their headers' order).
POSITION: str = load("position").text()
EXTEND_LOCKS: str = load("extend_locks").text()
PEEK_READY: str = load("peek_ready").text()
