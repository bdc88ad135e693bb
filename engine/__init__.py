"""What to do next: the phase machine, model client, tools, coordinator, replay and CLI."""

__version__ = "0.1.0"
