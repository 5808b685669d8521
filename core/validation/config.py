"""The stack's recovery objectives, validation settings and drill settings (``objectives:``,
``validation:`` and ``drill:`` in the stack file)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SourceObjectives(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpo_seconds: float | None = Field(None, gt=0, description="This source's recovery point objective, in seconds.")


class ObjectivesConfig(BaseModel):
    """What a recovery must achieve: the source documents' RTO 15 min and RPO 5 min by default."""

    model_config = ConfigDict(extra="forbid")
    rto_seconds: float = Field(
        900, gt=0, description="Recovery time objective: a drill's whole-stack recovery must end within it."
    )
    rpo_seconds: float = Field(
        300,
        gt=0,
        description="Recovery point objective: the newest recoverable point of every source must be at most this old "
        "(validation), and a drill may lose at most this much (disaster time minus recovery point).",
    )
    sources: dict[str, SourceObjectives] = Field(
        default_factory=dict, description="Per-source overrides, e.g. {app-files: {rpo_seconds: 3600}}."
    )

    def rpo_for(self, source: str) -> float:
        override = self.sources.get(source)
        return override.rpo_seconds if override and override.rpo_seconds else self.rpo_seconds


class SmokeQuery(BaseModel):
    """A query that must succeed on a restored source (and, with ``expect``, return that first value).

    postgres/mysql: SQL; redis: a command (``DBSIZE``, ``GET key``); files: a path below the root that must exist.
    """

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, description="The SQL, Redis command or relative path.")
    expect: str | None = Field(
        None, description="The first column of the first row (as text) must equal this; omitted: any result."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"query": data} if isinstance(data, str) else data


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reverify_after_hours: float = Field(
        168,
        ge=0,
        description="Integrity validation does not re-read the objects of a backup verified within this many hours "
        "(the record says what was verified and when); 0 re-reads every time.",
    )
    smoke_queries: dict[str, list[SmokeQuery]] = Field(
        default_factory=dict,
        description="Source name -> queries run on every restore-level validation and drill after the data checks.",
    )


class DrillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Source name -> an existing test environment to restore into instead of a throw-away sandbox "
        "(fields of the source, e.g. {host: test-db, port: 5433}); refused if it is one of the stack's sources.",
    )
    parallel: int = Field(4, ge=1, le=64, description="Sources restored at once in a whole-stack drill.")

    @model_validator(mode="after")
    def _no_secrets_in_targets(self) -> DrillConfig:
        # Drill settings are stored in the stack's block document, in clear: no password may ride along.
        for source, fields in self.targets.items():
            for name in fields:
                if "password" in name or "secret" in name:
                    raise ValueError(
                        f"drill.targets.{source}.{name}: a secret here would be stored in Prefect in clear; let the "
                        "test environment accept the drill's login without one (trust or peer authentication), or "
                        "leave the target out and drill in a throw-away sandbox"
                    )
        return self

    trend: int = Field(30, ge=2, le=1000, description="Drills shown in the chart and the trend of 'drill status'.")
