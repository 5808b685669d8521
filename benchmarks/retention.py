"""Benchmark: the retention planner on a year of a busy stack, and deleting expired backups against restic and shred.

Two parts, in one run:

* **plan** - ``core.retention.planner.plan_retention`` (pure: no I/O) on a catalog
  built in memory: ``--days`` (default 365) of a PostgreSQL source with a
  physical full every 6 h, an incremental (a log range) every 5 min and a log
  piece a minute, plus a Redis source with a full every 15 min, under GFS rules
  (hourly 24, daily 7, weekly 4, monthly 12, yearly 3; incrementals 2 days; a
  7-day point-in-time window). Seconds and peak RSS of this process (harness
  ``PeakRSS``), per 100 000 catalog items, and the decisions the plan made.
* **delete** - ``--snapshots`` N (default 30) distinct small file trees (random
  bytes, ``--size-mb`` in all), kept N times over in three forms, each copied
  afresh before every timed step (untimed):

  - restic (Debian's ``restic``, installed when missing): a repository holding
    one snapshot per tree; timed ``restic forget --keep-last 1 --prune``;
  - ours: a local vault holding one files-source backup per tree; timed
    ``core.retention.run.run_retention`` of a stack whose policy is
    ``keep_last: 1`` (audit verification, catalog, plan, crypto-shredding,
    destroying every object, a signed certificate per backup, the audit
    entries), with ``overwrite_passes`` 1 and 3;
  - ``shred -u -n 1`` and ``-n 3`` over copies of exactly the objects our run
    destroys (the N-1 expired backups' directories): the overwrite reference.

Rounds interleave the tools (the order rotates each round); medians count.
Goal (issue 12): a year of the stack planned in well under a few seconds (< 3 s).
Usage::

    python benchmarks/retention.py [--days 365] [--snapshots 30] [--size-mb 15] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402 - after the path set-up
    BENCH_PASS,
    PeakRSS,
    Rounds,
    add_goals,
    chosen_steps,
    common_arguments,
    emit,
    ensure_debian_packages,
    log,
    print_goals,
    print_steps,
    ratio,
    timed,
    tree_bytes,
)

STEPS = ("plan", "restic", "ours_1", "ours_3", "shred_1", "shred_3")
NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
MB = 1 << 20
PG, REDIS = "app-db", "app-cache"
GFS_RULES = {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 3}


# -- the planner -----------------------------------------------------------------------------


def bench_policy():
    """GFS fulls on both sources, two days of PostgreSQL incrementals and a 7-day point-in-time window."""
    from core.retention.config import RetentionConfig

    return RetentionConfig.model_validate(
        {
            "sources": {
                PG: {"full": GFS_RULES, "incremental": {"keep_within": "2d"}, "pitr_window": "7d"},
                REDIS: {"full": {"keep_last": 4, **GFS_RULES}},
            }
        }
    )


def synthetic_catalog(days: float):
    """``days`` up to NOW of the two sources, as ``read_catalog`` would see them (positions, chains, log ranges)."""
    from core.retention.catalog import BackupItem, Catalog, PieceItem, SourceInfo

    origin = NOW - timedelta(days=days)
    minute = timedelta(minutes=1)
    count = 0

    def lsn(when: datetime) -> str:  # 256 bytes of WAL a second since the log began
        offset = int((when - origin).total_seconds()) * 256
        return f"{offset >> 32:X}/{offset & 0xFFFFFFFF:X}"

    def seq_at(when: datetime) -> int:
        return int((when - origin) / minute)

    def backup_id(started: datetime) -> str:
        nonlocal count
        count += 1
        return f"backup_{started:%Y%m%d_%H%M%S}_{count:08x}"

    minutes = int(days * 24 * 60)
    pieces = [
        PieceItem(
            source=PG,
            seq=seq,
            first_time=origin + seq * minute,
            last_time=origin + (seq + 1) * minute - timedelta(seconds=1),
            key_id=f"k{seq // 1440}",  # a capture session (and its key) a day
            stored_bytes=2 << 20,
            partial=False,
            start={"lsn": lsn(origin + seq * minute), "timeline": 1},
            end={"lsn": lsn(origin + (seq + 1) * minute), "timeline": 1},
        )
        for seq in range(minutes)
    ]
    backups = []
    full = parent = None
    for slot in range(0, minutes - 5, 5):  # every 5 min: a full on the 6-hour marks, else an incremental
        started = origin + slot * minute
        if slot % 360 == 0:
            ended = started + 4 * minute
            item = BackupItem(
                id=(new := backup_id(started)), source=PG, kind="postgres", type="full", status="COMPLETED",
                started_at=started, ended_at=ended, chain=new, parent=None, log_pieces=None,
                stored_bytes=1 << 30, storage_class=None, archived_to=None,
                position={"lsn": lsn(started), "timeline": 1, "physical": True},
            )  # fmt: skip
            full = item
        else:
            ended = started + 30 * timedelta(seconds=1)
            item = BackupItem(
                id=backup_id(started), source=PG, kind="postgres", type="incremental", status="COMPLETED",
                started_at=started, ended_at=ended, chain=full.id, parent=parent.id,
                log_pieces=(seq_at(parent.ended_at), seq_at(ended)), stored_bytes=0, storage_class=None,
                archived_to=None, position={"lsn": lsn(started), "timeline": 1, "physical": False},
            )  # fmt: skip
        backups.append(item)
        parent = item
    for slot in range(0, minutes - 1, 15):
        started = origin + slot * minute
        backups.append(
            BackupItem(
                id=(new := backup_id(started)),
                source=REDIS,
                kind="redis",
                type="full",
                status="COMPLETED",
                started_at=started,
                ended_at=started + minute,
                chain=new,
                parent=None,
                log_pieces=None,
                stored_bytes=200 << 20,
                storage_class=None,
                archived_to=None,
                position={"replid": "r1", "offset": slot * 60 * 4096},
            )  # fmt: skip
        )
    backups.sort(key=lambda b: (b.started_at, b.id))
    sources = {PG: SourceInfo(PG, "postgres"), REDIS: SourceInfo(REDIS, "redis")}
    return Catalog(backups=backups, pieces=pieces, sources=sources)


def plan_once(days: float, out: dict, rounds: Rounds, key: str) -> float:
    """Build the ``days`` catalog (untimed), then time ``plan_retention`` on it under ``PeakRSS``; its seconds."""
    import gc

    from core.retention.planner import plan_retention

    gc.collect()
    with PeakRSS() as built:
        catalog, policy = synthetic_catalog(days), bench_policy()
    items = len(catalog.backups) + len(catalog.pieces)
    gc.collect()
    with PeakRSS() as rss, rounds.sample(key) as r:
        started = time.monotonic()
        plan = plan_retention(catalog, policy, [], NOW)
        r["s"] = time.monotonic() - started
    actions = Counter(f"{d.kind} {d.action}" for d in plan.decisions)
    out.setdefault("plan_spans", {})[str(days)] = {
        "items": items,
        "backups": len(catalog.backups),
        "pieces": len(catalog.pieces),
        "s": round(r["s"], 3),
        "s_per_100k_items": round(r["s"] / items * 100_000, 3),
        "peak_rss_mb": rss.peak_mb,
        "rss_increase_mb": rss.increase_mb,
        "rss_increase_mb_per_100k_items": round(rss.increase_mb / items * 100_000, 1),
        "catalog_mb": built.increase_mb,  # what the catalog itself holds (the input, not the planner's)
        "decisions": len(plan.decisions),
        "actions": dict(sorted(actions.items())),
        "warnings": len(plan.warnings),
        "refused": sorted(plan.refused),
    }
    return r["s"]


def run_plan(args: argparse.Namespace, out: dict, rounds: Rounds) -> None:
    """Spans doubling from one day up to ``--days``, each timed once; the full span ``--repeat`` times.

    The doubling shows how the planner's time grows with the catalog; a span is not tried when the one
    before it took more than a quarter of ``--plan-budget-s`` (a quadratic planner would need four times as
    long), and the full span is then extrapolated from the growth measured, never run.
    """
    spans, days = [], 1.0
    while days < args.days:
        spans.append(days)
        days *= 2
    spans.append(float(args.days))
    previous: tuple[float, float] | None = None  # (items, seconds) of the last span run
    growth = None
    for days in spans:
        final = days == spans[-1]
        if previous is not None and previous[1] > args.plan_budget_s / 4:
            log(f"planner: {days:g} days not run (the previous span took {previous[1]:.1f} s)")
            break
        log(f"planner: {days:g} days of the stack")
        key = "plan_s" if final else f"plan_{days:g}d_s"
        seconds = plan_once(days, out, rounds, key)
        if final:
            for _ in range(args.repeat - 1):
                plan_once(days, out, rounds, key)
        items = out["plan_spans"][str(days)]["items"]
        if previous is not None and previous[1] > 0.05:
            import math

            growth = math.log(seconds / previous[1]) / math.log(items / previous[0])
        previous = (items, seconds)
    out["plan_growth_exponent"] = round(growth, 2) if growth is not None else None
    full = out["plan_spans"].get(str(float(args.days)))
    out["plan_days"], out["plan_items"] = args.days, None
    if full is not None:
        out["plan_items"], out["plan_decisions"] = full["items"], full["decisions"]
        out["plan_peak_rss_mb"], out["plan_rss_increase_mb"] = full["peak_rss_mb"], full["rss_increase_mb"]
    elif previous is not None and growth is not None:
        # Items of the full span counted without building it: the generator's cadence is fixed.
        minutes = int(args.days * 24 * 60)
        items = minutes + len(range(0, minutes - 5, 5)) + len(range(0, minutes - 1, 15))
        out["plan_items"] = items
        out["plan_s_extrapolated"] = round(previous[1] * (items / previous[0]) ** growth, 1)


# -- deleting expired backups ---------------------------------------------------------------------


def restic_env(repo: Path) -> dict:
    # Only what restic reads; a throw-away password for throw-away data.
    return dict(
        os.environ, RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=BENCH_PASS, RESTIC_CACHE_DIR=str(repo) + ".cache"
    )


def stack_for(vault_dir: Path, data: Path, passes: int):
    from core.stack import parse_stack

    return parse_stack(
        {
            "stack": "bench",
            "vault": {"type": "local", "path": str(vault_dir)},
            "sources": [{"name": "bench", "kind": "files", "root": str(data)}],
            "retention": {"overwrite_passes": passes, "sources": {"bench": {"full": {"keep_last": 1}}}},
        },
        "benchmark stack",
    )


def make_templates(workdir: Path, args: argparse.Namespace, out: dict, keyring) -> dict:
    """The N trees backed up one after the other, from one directory, by restic and by us; the templates."""
    from core.engines import engine_for
    from core.operations import backup_source

    data, trees = workdir / "data", workdir / "trees"
    trees.mkdir()
    files = 16
    size = max(4096, args.size_mb * MB // args.snapshots // files)
    for i in range(args.snapshots):  # incompressible and distinct: nothing deduplicates across snapshots
        tree = trees / f"{i:03d}"
        (tree / "sub").mkdir(parents=True)
        for j in range(files):
            (tree / ("sub" if j % 2 else "") / f"f{j:02d}.bin").write_bytes(os.urandom(size))
    out["tree_files"], out["tree_bytes"] = files, files * size
    restic_repo, vault_dir = workdir / "tpl-restic", workdir / "tpl-vault"
    timed(["restic", "init", "-q"], env=restic_env(restic_repo))
    config = stack_for(vault_dir, data, 1)
    vault = config.vault.open(create=True)
    engine = engine_for(config.source("bench"))
    ids = []
    log(f"backing up {args.snapshots} trees of {files * size / 1024:.0f} KiB with restic and with genesis-dr")
    for i in range(args.snapshots):
        (trees / f"{i:03d}").rename(data)  # one path for every snapshot: restic groups snapshots by path
        timed(["restic", "backup", "-q", "--host", "bench", str(data)], env=restic_env(restic_repo))
        ids.append(backup_source(vault, keyring, engine, "full").id)
        shutil.rmtree(data)
    expired = ids[:-1]
    shredded = []  # what our run destroys of the expired backups: their directories and catalog entries
    for backup_id in expired:
        shredded += [p for p in (vault_dir / "backups" / backup_id).rglob("*") if p.is_file()]
        shredded += [p for p in vault_dir.glob(f"*/*/{backup_id}.json") if p.is_file()]
    out["restic_repo_bytes"], out["vault_bytes"] = tree_bytes(restic_repo), tree_bytes(vault_dir)
    out["expired"], out["shred_files"] = len(expired), len(shredded)
    out["shred_bytes"] = sum(p.stat().st_size for p in shredded)
    return {"restic": restic_repo, "vault": vault_dir, "data": data, "expired": expired, "shredded": shredded}


def fresh_copy(template: Path, where: Path) -> Path:
    if where.exists():
        shutil.rmtree(where)
    shutil.copytree(template, where, symlinks=True)
    os.sync()  # the copy's dirty pages written now, not during the timed step
    return where


def step_restic(tpl: dict, workdir: Path, rounds: Rounds, out: dict) -> None:
    repo = fresh_copy(tpl["restic"], workdir / "run-restic")
    env = restic_env(repo)
    with rounds.sample("restic_s") as r:
        r["s"], _ = timed(["restic", "forget", "-q", "--keep-last", "1", "--prune"], env=env)
    _, listing = timed(["restic", "snapshots", "--json"], env=env)
    left = json.loads(listing)
    assert len(left) == 1, f"restic kept {len(left)} snapshots"
    out["restic_repo_bytes_after"] = tree_bytes(repo)
    shutil.rmtree(repo)


def step_ours(tpl: dict, workdir: Path, rounds: Rounds, out: dict, passes: int) -> None:
    from core.retention.certificate import certificates
    from core.retention.run import run_retention

    vault_dir = fresh_copy(tpl["vault"], workdir / f"run-ours-{passes}")
    config = stack_for(vault_dir, tpl["data"], passes)
    with PeakRSS() as rss, rounds.sample(f"ours_{passes}_s") as r:
        started = time.monotonic()
        report = run_retention(config, say=lambda _line: None)
        r["s"] = time.monotonic() - started
    assert sorted(report.deleted) == sorted(tpl["expired"]), report.text()
    vault = config.vault.open()
    assert len(vault.entries()) == 1 and len(certificates(vault.store)) == len(tpl["expired"])
    assert not any(p.exists() for p in (vault_dir / q.relative_to(tpl["vault"]) for q in tpl["shredded"]))
    out.setdefault(f"ours_{passes}_peak_rss_mb_rounds", []).append(rss.peak_mb)
    out["vault_bytes_after"] = tree_bytes(vault_dir)
    shutil.rmtree(vault_dir)


def step_shred(tpl: dict, workdir: Path, rounds: Rounds, passes: int) -> None:
    where = fresh_copy(tpl["vault"], workdir / f"run-shred-{passes}")
    files = [str(where / p.relative_to(tpl["vault"])) for p in tpl["shredded"]]
    with rounds.sample(f"shred_{passes}_s") as r:
        r["s"], _ = timed(["shred", "-u", "-n", str(passes), *files])
    assert not any(os.path.exists(f) for f in files)
    shutil.rmtree(where)


def run_delete(args: argparse.Namespace, steps: set[str], workdir: Path, out: dict, rounds: Rounds) -> None:
    from benchmarks.harness import bench_keyring

    ensure_debian_packages({"restic": "restic", "shred": "coreutils"})
    out["restic_version"] = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
    tpl = make_templates(workdir, args, out, bench_keyring(out))
    order = [
        ("restic", lambda: step_restic(tpl, workdir, rounds, out)),
        ("ours_1", lambda: step_ours(tpl, workdir, rounds, out, 1)),
        ("ours_3", lambda: step_ours(tpl, workdir, rounds, out, 3)),
        ("shred_1", lambda: step_shred(tpl, workdir, rounds, 1)),
        ("shred_3", lambda: step_shred(tpl, workdir, rounds, 3)),
    ]
    for round_no in range(args.repeat):
        log(f"deletion round {round_no + 1} of {args.repeat}")
        shift = round_no % len(order)  # each tool goes first in turn
        for step, run_step in order[shift:] + order[:shift]:
            if step in steps:
                log(f"  {step}")
                run_step()


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    steps = chosen_steps(args, STEPS)
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-retention-", dir=args.workdir))
    # The host's audit signing key is made on first use under the state directory: a throw-away one here.
    os.environ["GENESIS_DR_STATE_DIR"] = str(workdir / "state")
    out: dict = {"cpus": os.cpu_count(), "python": platform.python_version(), "snapshots": args.snapshots}
    rounds = Rounds()
    try:
        if "plan" in steps:
            run_plan(args, out, rounds)
        if steps - {"plan"}:
            run_delete(args, steps, workdir, out, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rounds.summarize(out, args.repeat)
    _summarize(out)
    return out


def _summarize(out: dict) -> None:
    median = lambda values: sorted(values)[(len(values) - 1) // 2]  # noqa: E731
    for passes in (1, 3):
        if out.get(f"ours_{passes}_peak_rss_mb_rounds"):
            out[f"ours_{passes}_peak_rss_mb"] = median(out[f"ours_{passes}_peak_rss_mb_rounds"])
    if out.get("plan_s") and out.get("plan_items"):
        out["plan_s_per_100k_items"] = round(out["plan_s"] / out["plan_items"] * 100_000, 3)
        out["plan_rss_increase_mb_per_100k_items"] = round(out["plan_rss_increase_mb"] / out["plan_items"] * 1e5, 1)
    for passes in (1, 3):
        ratio(out, f"ours_{passes}_vs_restic", f"ours_{passes}_s", "restic_s")
        ratio(out, f"ours_{passes}_vs_shred_{passes}", f"ours_{passes}_s", f"shred_{passes}_s")
    if out.get("expired"):
        for key in ("restic", "ours_1", "ours_3", "shred_1", "shred_3"):
            if out.get(f"{key}_s"):
                out[f"{key}_ms_per_backup"] = round(out[f"{key}_s"] / out["expired"] * 1000, 1)
    span = f"{out.get('plan_days')} days of the stack"
    goals = {f"planner, {span} (s)": ("plan_s", 3.0, True)}
    if "plan_s" not in out and "plan_s_extrapolated" in out:
        goals = {f"planner, {span} (s, extrapolated)": ("plan_s_extrapolated", 3.0, True)}
    add_goals(out, goals)


def print_text(out: dict) -> None:
    spans = out.get("plan_spans", {})
    if spans:
        print(f"Retention planner (pure) on a synthetic catalog: {PG} full 6 h + incremental 5 min + log 1 min, "
              f"{REDIS} full 15 min")  # fmt: skip
        print(
            f"  {'span':>8} {'items':>9} {'seconds':>9} {'s/100k':>8} {'peak RSS':>9} {'+RSS':>8} "
            f"{'+RSS/100k':>9} {'catalog':>8} {'decisions':>9}"
        )
        for days, span in spans.items():
            print(
                f"  {float(days):7g}d {span['items']:9d} {span['s']:9.3f} {span['s_per_100k_items']:8.3f} "
                f"{span['peak_rss_mb']:7.1f}MB {span['rss_increase_mb']:6.1f}MB "
                f"{span['rss_increase_mb_per_100k_items']:7.1f}MB {span['catalog_mb']:6.1f}MB {span['decisions']:9d}"
            )
        if out.get("plan_growth_exponent") is not None:
            print(f"  time grows as items^{out['plan_growth_exponent']} (last two spans)")
        if "plan_s_extrapolated" in out:
            print(
                f"  {out['plan_days']} days ({out['plan_items']} items) NOT RUN: extrapolated "
                f"{out['plan_s_extrapolated']} s"
            )
        last = spans[max(spans, key=float)]
        print(f"  actions at {float(max(spans, key=float)):g} days: {last['actions']}")
    if "restic_s" in out or "ours_1_s" in out:
        print(
            f"Deleting {out.get('expired')} expired of {out['snapshots']} backups "
            f"({out.get('tree_bytes', 0) / 1024:.0f} KiB trees of random bytes; {out.get('shred_files')} objects, "
            f"{out.get('shred_bytes', 0) / MB:.1f} MB destroyed by ours)"
        )
        print_steps(
            out,
            [
                ("restic forget --keep-last 1 --prune", "restic_s", None),
                ("genesis-dr run_retention, overwrite_passes 1", "ours_1_s", None),
                ("genesis-dr run_retention, overwrite_passes 3", "ours_3_s", None),
                ("shred -u -n 1 (same objects)", "shred_1_s", None),
                ("shred -u -n 3 (same objects)", "shred_3_s", None),
            ],
        )
        for key in (
            "restic_ms_per_backup", "ours_1_ms_per_backup", "ours_3_ms_per_backup",
            "ours_1_vs_restic", "ours_3_vs_restic", "ours_1_vs_shred_1", "ours_3_vs_shred_3",
            "ours_1_peak_rss_mb", "ours_3_peak_rss_mb", "restic_repo_bytes", "restic_repo_bytes_after",
            "vault_bytes", "vault_bytes_after",
        ):  # fmt: skip
            if key in out:
                print(f"  {key:46s} {out[key]}")
    print_goals(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365, help="span of the planner's synthetic catalog")
    parser.add_argument(
        "--plan-budget-s", type=float, default=60.0, help="stop doubling the planner's span past this (see run_plan)"
    )
    parser.add_argument("--snapshots", type=int, default=30, help="backups (and restic snapshots) of distinct trees")
    common_arguments(parser, STEPS, size_mb=15)  # --size-mb: the N trees together
    args = parser.parse_args(argv)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
