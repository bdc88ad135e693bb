"""CLI commands: audit. Registered on ``engine.cli.cli`` when that module is imported."""

from __future__ import annotations
