"""The README documents every setting and every topic; these fail when code and docs drift apart."""

from __future__ import annotations

from pathlib import Path

from streams.catalog import CATALOG
from streams.settings import Settings
from streams.settings.readme import BEGIN, END, settings_tables

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [field.alias for field in Settings.model_fields.values() if f"`{field.alias}`" not in README]
    assert not missing, f"settings missing from README.md: {missing}"


def test_the_settings_table_is_the_one_generated_from_the_sections() -> None:
    written = README[README.index(BEGIN):README.index(END) + len(END)]
    assert written == settings_tables(), (
        "README.md's settings table differs from the settings in streams/settings/: "
        "run `python -m streams.settings.readme --write README.md`"
    )


def test_every_topic_is_documented_in_the_readme() -> None:
    missing = [name for name in CATALOG if f"`{name}`" not in README]
    assert not missing, f"topics missing from README.md: {missing}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README[:600]
    assert "make dev" in head and "make test" in head


def test_every_package_has_its_line_in_the_layout() -> None:
    root = Path(__file__).resolve().parents[2]
    layout = README[README.index("## Layout"):]
    packages = sorted(
        f"{path.parent.relative_to(root).as_posix()}/"
        for top in ("schemas", "connectors", "streams", "agents")
        for path in (root / top).rglob("__init__.py")
    )
    missing = [package for package in packages if f"\n{package} " not in layout]
    assert not missing, f"packages missing from the README's Layout: {missing}"
