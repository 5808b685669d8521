"""Work queues: the order in which a pool's busy workers take the runs waiting for them.

Every work pool a stack uses has the same queues; priority 1 is served first. A failover
never waits behind a backup, the log capture and the incrementals (the RPO) never wait
behind a full, and housekeeping comes last. prefect.yaml puts each deployment on its queue
(``work_pool.work_queue_name``); ``QUEUE_OF`` says the same for the code that registers them.
"""

from __future__ import annotations

from typing import Any

# queue -> priority (1 first)
QUEUES: dict[str, int] = {
    "failover": 1,
    "capture": 2,
    "incremental": 3,
    "full": 4,
    "validation": 5,
    "drill": 6,
    "retention": 7,
}

# deployment name (prefect.yaml) -> its queue
QUEUE_OF: dict[str, str] = {
    "failover": "failover",
    "failback": "failover",
    "monitor": "failover",
    "restore": "failover",
    "capture": "capture",
    "incremental": "incremental",
    "replicate": "incremental",
    "full": "full",
    "differential": "full",
    "redis": "full",
    "validate-integrity": "validation",
    "validate-restore": "validation",
    "drill-daily": "drill",
    "drill-weekly": "drill",
    "drill-monthly": "drill",
    "drill-full": "drill",
    "retention": "retention",
    "audit-verify": "retention",
    "hold": "retention",
    "erase": "retention",
    "self-backup": "retention",
}

POOL_TYPE = "process"


def ensure_pool(client: Any, name: str) -> list[str]:
    """Create work pool ``name`` (type process) with ``QUEUES`` at their priorities, or bring an existing one's
    queues to them; one line per change (none when all was in place). ``client``: a sync Prefect client.

    Other queues of the pool (its ``default`` queue, one an operator added) keep their relative order after ours.
    """
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    lines: list[str] = []
    try:
        client.read_work_pool(name)
    except ObjectNotFound:
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template))
        lines.append(f"created work pool {name} ({POOL_TYPE})")
    queues = {q.name: q for q in client.read_work_queues(work_pool_name=name)}
    # In priority order: the server shifts a queue already holding a priority down by one, so setting them
    # first to last leaves ours at exactly 1..7 and pushes the others after them.
    order = sorted(QUEUES, key=QUEUES.__getitem__)
    for i, queue in enumerate(order):
        priority, found = QUEUES[queue], queues.get(queue)
        if found is None:
            client.create_work_queue(name=queue, priority=priority, work_pool_name=name)
            lines.append(f"created work queue {name}/{queue} (priority {priority})")
        elif found.priority != priority:
            client.update_work_queue(found.id, priority=priority)
            lines.append(f"work queue {name}/{queue}: priority {found.priority} -> {priority}")
        else:
            continue
        if any(later in queues for later in order[i + 1 :]):  # they may have moved: read them again
            queues = {q.name: q for q in client.read_work_queues(work_pool_name=name)}
    return lines
