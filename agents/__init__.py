"""Agents: business logic only. Each module registers its agents with ``@agent`` on import."""
