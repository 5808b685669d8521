"""Engine registry: source kind -> engine class (imported lazily)."""

from __future__ import annotations

from importlib import import_module

from core.engines.base import Engine

ENGINES = {
    "postgres": "core.engines.postgres:PostgresEngine",
    "mysql": "core.engines.mysql:MySQLEngine",
    "redis": "core.engines.redis:RedisEngine",
    "files": "core.engines.files:FilesEngine",
}


def engine_for(config) -> Engine:
    """The engine for a ``core.sources`` config."""
    module, _, cls = ENGINES[config.kind].partition(":")
    return getattr(import_module(module), cls)(config)
