"""The settings sections: each setting lives in exactly one section, and importing them does nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.settings import SECTIONS, Settings
from streams.settings.readme import render_default

REPO_ROOT = Path(__file__).resolve().parents[4]


def test_every_setting_lives_in_exactly_one_section() -> None:
    owners: dict[str, list[str]] = {}
    for section in SECTIONS:
        for name in section.model_fields:
            owners.setdefault(name, []).append(section.__name__)
    assert set(owners) == set(Settings.model_fields), "Settings has fields outside SECTIONS (or the reverse)"
    shared = {name: where for name, where in owners.items() if len(where) > 1}
    assert not shared, f"settings defined in more than one section: {shared}"


def test_every_section_has_a_title() -> None:
    assert all(section.section_title for section in SECTIONS)


def test_importing_the_settings_reads_no_environment_and_creates_nothing(tmp_path: Path) -> None:
    # A value that from_env would refuse: importing must not validate (or even read) it.
    env = {"PATH": "/usr/bin:/bin", "SOMA_PARTITIONS": "not-a-number", "SOMA_DATA_DIR": str(tmp_path / "data")}
    code = "import streams.settings, streams.settings.readme, sys; sys.exit('faust' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or "importing the settings imported faust"
    assert not (tmp_path / "data").exists()


def test_defaults_render_as_they_would_be_typed() -> None:
    fields = Settings.model_fields
    assert render_default(fields["static_membership"]) == "false"
    assert render_default(fields["budget_thresholds"]) == "0.8,1.0"
    assert render_default(fields["admin_users"]) == "(empty)"
    assert render_default(fields["kafka_bootstrap_servers"]) == "(unset)"
    assert render_default(fields["data_dir"]) == "data"
