"""A PNG of RTO and RPO over the last drills, with the objectives drawn as lines.

Drawn with matplotlib's object API on the Agg canvas (no pyplot): no display, no global figure
state, so a drill can draw while other threads work. The PNG carries no creation metadata, so the
same records give the same bytes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.drills.record import DrillRecord

REPORTS_ENV = "GENESIS_DR_REPORTS"
SIZE_IN = (9.0, 6.5)
DPI = 100


def reports_dir() -> Path:
    """Where drill charts are written locally: $GENESIS_DR_REPORTS, else ~/.genesis-dr/reports."""
    return Path(os.environ.get(REPORTS_ENV) or Path.home() / ".genesis-dr" / "reports")


def render_chart(records: list[DrillRecord | dict[str, Any]]) -> bytes:
    """PNG bytes: RTO (top) and RPO per source (bottom) of ``records`` (oldest first); objectives as
    dashed lines, failed drills marked with a red cross."""
    drills = [r if isinstance(r, DrillRecord) else DrillRecord.from_dict(r) for r in records]
    figure = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    rto_axes, rpo_axes = figure.subplots(2, 1, sharex=True)
    x = list(range(len(drills)))
    stack = drills[-1].stack if drills else "-"
    figure.suptitle(f"Drills of stack {stack}: measured RTO and RPO against the objectives")

    rto_axes.set_ylabel("RTO (s)")
    rto_points = [(i, d.rto_s) for i, d in zip(x, drills, strict=True) if d.rto_s is not None]
    if rto_points:
        rto_axes.plot(*zip(*rto_points, strict=True), marker="o", color="tab:blue", label="RTO (whole stack)")
    failed = [(i, d.rto_s) for i, d in zip(x, drills, strict=True) if not d.passed and d.rto_s is not None]
    if failed:
        rto_axes.scatter(*zip(*failed, strict=True), marker="x", s=80, color="tab:red", zorder=3, label="drill failed")
    objectives = {d.rto_objective_s for d in drills if d.rto_objective_s}
    for objective in sorted(objectives):
        rto_axes.axhline(
            objective, linestyle="--", color="tab:red", linewidth=1, label=f"RTO objective {objective:g} s"
        )

    rpo_axes.set_ylabel("RPO (s)")
    series: dict[str, list[tuple[int, float]]] = {}
    rpo_objectives: dict[float, list[str]] = {}
    for i, drill in zip(x, drills, strict=True):
        for key, src in drill.sources.items():
            if src.get("rpo_s") is not None:
                series.setdefault(key, []).append((i, src["rpo_s"]))
            if src.get("rpo_objective_s") and key not in rpo_objectives.get(src["rpo_objective_s"], []):
                rpo_objectives.setdefault(src["rpo_objective_s"], []).append(key)
    for key, points in sorted(series.items()):
        rpo_axes.plot(*zip(*points, strict=True), marker="o", label=key)
    for objective, keys in sorted(rpo_objectives.items()):
        which = "" if len(rpo_objectives) == 1 else f" ({', '.join(sorted(keys))})"
        rpo_axes.axhline(
            objective, linestyle="--", color="tab:red", linewidth=1, label=f"RPO objective {objective:g} s{which}"
        )

    if not drills:
        rto_axes.text(0.5, 0.5, "no monthly or full drill yet", ha="center", va="center", transform=rto_axes.transAxes)
    rpo_axes.set_xticks(x, [d.started_at[:16].replace("T", " ") or d.id for d in drills], rotation=30, ha="right")
    for axes in (rto_axes, rpo_axes):
        # Measured figures are often a hundredth of their objectives: a log scale (linear below 1 s,
        # where an RPO of 0 lives) shows both the trend and the distance to the objective.
        axes.set_yscale("symlog", linthresh=1.0)
        top = max([1.0, *(max(line.get_ydata(), default=0) for line in axes.lines)])
        axes.set_ylim(bottom=0, top=top * 2)  # room above the objective line
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", fontsize="small")
    out = io.BytesIO()
    # No Software/creation metadata: identical records give an identical PNG.
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def write_local(stack: str, drill_id: str, png: bytes, directory: Path | None = None) -> Path:
    """The chart's local copy, ``<reports>/<stack>/<drill id>.png`` (written whole, then renamed)."""
    folder = (directory or reports_dir()) / stack
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{drill_id}.png"
    partial = path.with_suffix(".png.partial")
    partial.write_bytes(png)
    partial.replace(path)
    return path
