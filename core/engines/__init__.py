"""The one registry of source kinds: kind -> its package (``core/engines/<kind>/``).

Each package holds ``engine.py`` (the Engine class named here) and ``position.py``
(how that kind's consistency positions read, order and start a log). Everything
that needs kind-specific knowledge (the manifest's listing text, the restore
planner's ordering of log pieces) asks here, so the repository knows no engine.
Packages are imported lazily: a run touches only the kinds it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import import_module
from typing import Any

from core.engines.base import Engine

ENGINES = {
    "postgres": "PostgresEngine",
    "mysql": "MySQLEngine",
    "redis": "RedisEngine",
    "files": "FilesEngine",
    "bucket": "BucketEngine",
}


def _module(kind: str, name: str):
    if kind not in ENGINES:
        raise KeyError(f"unknown source kind {kind!r}; known: {', '.join(ENGINES)}")
    return import_module(f"core.engines.{kind}.{name}")


@cache
def _position(kind: str):
    """The kind's ``position`` module, looked up once: planners order every log piece through it."""
    return _module(kind, "position")


def engine_class(kind: str) -> type[Engine]:
    return getattr(_module(kind, "engine"), ENGINES[kind])


def engine_for(config) -> Engine:
    """The engine for a ``core.sources`` config."""
    return engine_class(config.kind)(config)


def position_text(kind: str, position: dict[str, Any]) -> str:
    """A position in one short phrase, for listings ('lsn 0/3000028', 'binlog b.000002:415')."""
    if kind not in ENGINES:
        return ", ".join(f"{k}={v}" for k, v in position.items() if not isinstance(v, (dict, list)))[:60]
    return _position(kind).text(position)


def position_order(kind: str, position: dict[str, Any]) -> tuple:
    """A sort key: positions of one source's log compare in log order."""
    return _position(kind).order(position)


def position_order_key(kind: str) -> Callable[[dict[str, Any]], tuple]:
    """``position_order`` for one kind as a plain function, for ordering many positions at once."""
    return _position(kind).order


def log_start(kind: str, position: dict[str, Any]) -> dict[str, Any] | None:
    """Where the log must start for a replay on top of a full backup taken at ``position``;
    None when such a backup cannot take a log replay (a logical PostgreSQL dump)."""
    return _position(kind).log_start(position)
