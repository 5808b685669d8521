"""Notifications of backups, validations, drills, failovers, failbacks and the monitor's pages: Slack,
PagerDuty, AWS SNS and webhooks.

Plain Python (no Prefect): the flows call ``notify`` with an ``Event``; a receiver that is
down or slow never fails the caller, it is counted and reported in the delivery results.
"""

from core.notify.event import Delivery, Event
from core.notify.send import notify

__all__ = ["Delivery", "Event", "notify"]
