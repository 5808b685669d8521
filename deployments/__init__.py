"""Deployment helpers and monitoring assets (alert rules, dashboards) live here."""
