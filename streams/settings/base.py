"""What every settings section shares: pydantic configuration, parsing of comma-separated lists.

A section is a pydantic model of the settings of one area (Kafka, the engine, locks, ...). The
process's :class:`~streams.settings.settings.Settings` inherits every section, so code reads
``settings.lock_max_ttl_seconds`` while each field, its bounds and its validators live with their area.
Importing a section reads nothing and creates nothing: values come only from
:meth:`Settings.from_env`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = ["Section", "SettingsError", "split_csv"]


class SettingsError(Exception):
    """A setting from the environment is missing or out of range."""


class Section(BaseModel):
    """Base of the settings sections; the field alias is the environment variable that sets it."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    #: Heading of the section in the README's settings table.
    section_title: ClassVar[str] = ""


def split_csv(value: Any) -> Any:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: list settings come from one environment variable."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value
