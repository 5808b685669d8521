"""Retention and compliance: policies, legal holds, archive tiers, secure deletion, erasure.

The planner is pure (``planner.plan_retention``); the executor (``run``) is the only
part that deletes, and only what a plan says.
"""
