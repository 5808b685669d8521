"""A retention sweep and an audit verification tell the stack's channels how they ended (real HTTP to a local
receiver, flows through Prefect's harness): a tampered trail pages at critical, a refused sweep pages, a sweep
that deleted reports what it freed; neither writes a second audit entry for what its core already recorded."""

from __future__ import annotations

import json

import pytest

from core.notify.reports import audit_event, retention_event
from tests.fixtures_notify import Receiver
from tests.test_retention_flows import ADMIN_ENV, actions, fulls, listed
from tests.test_retention_flows import admin as admin  # noqa: PLC0414 - a fixture, used by name


def test_event_builders_carry_counts_problems_and_severity():
    done = retention_event(
        "s", {"deleted": ["a", "b"], "archived": [], "certificates": ["c1", "c2"], "freed_bytes": 2048}
    )
    assert (done.activity, done.outcome, done.severity, done.subject) == ("retention", "success", None, "sweep")
    assert done.summary == "deleted 2 backup(s)/log range(s), archived 0, freed 2.0 KiB"
    refused = retention_event("s", {"refused": {"db": "would delete every backup"}}, RuntimeError("refused: db"))
    assert (refused.outcome, refused.severity, refused.details["refused"]) == (
        "failure",
        "error",
        {"db": "would delete every backup"},
    )
    tampered = audit_event("s", {"entries": 9, "problems": [{"seq": 4, "kind": "edited", "text": "entry 4 edited"}]},
                           RuntimeError("audit trail: entry 4 edited"))  # fmt: skip
    assert (tampered.activity, tampered.outcome, tampered.severity) == ("audit", "failure", "critical")
    assert tampered.details["problems"] == ["entry 4 edited"]


def test_retention_and_audit_runs_notify_and_record_nothing_twice(make_stack, tmp_path, admin):
    from core.errors import AuditTrailError, RetentionRefusedError
    from flows.audit import audit_verify
    from flows.retention import retention

    with Receiver() as rx:
        from core.crypto.signing import SigningConfig
        from core.sources import FilesSourceConfig
        from tests.test_engine_files import write

        write(tmp_path / "app/conf/app.ini", b"[app]\nv = 1\n")
        stack = make_stack(
            [FilesSourceConfig(name="app-files", root=str(tmp_path / "app"))],
            retention={"sources": {"app-files": {"full": {"keep_last": 1}}}},
            signing={
                "admin_key_from": f"env:{ADMIN_ENV}",
                "admin_public_keys": [admin],
                "trusted_public_keys": [SigningConfig().host_key().public_b64],
            },
            notifications={"webhooks": [{"name": "ops", "url": rx.url("/hook")}]},
        )
        first, second = fulls(stack, 2)
        before = len(rx.posts)
        report = retention(stack=stack.name)
        assert report["deleted"] == [first] and listed(stack) == [second]
        audit_verify(stack=stack.name)

        entry = next(p for p in sorted((stack.vault_path / "audit/entries").glob("*.json")))
        tampered = json.loads(entry.read_text())
        tampered["subject"] = "someone else"
        entry.write_text(json.dumps(tampered))
        with pytest.raises(AuditTrailError):
            audit_verify(stack=stack.name)
        with pytest.raises(RetentionRefusedError):
            retention(stack=stack.name)

        hooks = [p.body for p in rx.wait(before + 4)[before:] if p.path == "/hook"]
        assert [(h["activity"], h["outcome"]) for h in hooks] == [
            ("retention", "success"),
            ("audit", "success"),
            ("audit", "failure"),
            ("retention", "failure"),
        ], hooks
        assert hooks[2]["severity"] == "critical" and "entry 1" in hooks[2]["summary"], hooks[2]
    # The sweep's entries are core's own (retention.run, retention.delete): the notification added none.
    assert actions(stack, "retention") == ["retention.delete", "retention.run", "retention.run"], actions(stack, "")
    assert actions(stack, "audit") == ["audit.alarm"]
