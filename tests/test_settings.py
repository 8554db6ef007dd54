"""The settings table (drawpipe/settings.py) is the one declaration: flags, profile keys,
dataclass defaults and README's option lists all say what it says."""

import re
import subprocess
import sys

import pytest
from conftest import PROJECT_DIR

from drawpipe.cli.config import PROFILE_SETTINGS as PROFILE_CHECKS
from drawpipe.drawthings.api import DEFAULT_PORT
from drawpipe.drawthings.client import ClientSettings
from drawpipe.engine.loop import EngineSettings
from drawpipe.sam.labels import DEFAULT_LABEL_MODEL, LABEL_MODELS, TRUST_THRESHOLD, LabelSettings
from drawpipe.sam.objects import ObjectRules
from drawpipe.sam.settings import GRANULARITIES, CutoutSettings, GeneratorSettings
from drawpipe.settings import (CUTOUTS, DEFAULT_SERVER, GENERATOR, GLANCE, LABELS, OBJECTS,
                               PROFILE_SETTINGS, QUARANTINE, RUN, SERVER, SETTINGS, SHARE, WATCH,
                               default,
                               format_value)

README = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """README's text under the heading ``title``, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_the_dataclasses_take_their_defaults_from_the_table():
    engine = EngineSettings(root=PROJECT_DIR)
    for name in ("lease_seconds", "poll_seconds", "watch_retry_seconds"):
        assert getattr(engine, name) == default(name), name
    client = ClientSettings()
    for name in ("connect_timeout_seconds", "read_timeout_seconds", "retries", "backoff_seconds",
                 "server_process_name"):
        assert getattr(client, name) == default(name), name
    generator = GeneratorSettings()
    for name in GENERATOR:
        assert getattr(generator, name) == default(name), name
    cutouts = CutoutSettings()
    assert cutouts.margin_fraction == default("margin")
    for name in ("min_area_fraction", "max_cutouts", "keep_background"):
        assert getattr(cutouts, name) == default(name), name
    rules = ObjectRules()
    for name in ("part_inside_fraction", "duplicate_iou", "min_area_fraction"):
        assert getattr(rules, name) == default(name), name
    assert GRANULARITIES == SETTINGS["granularity"].choices
    assert LabelSettings().trust_threshold == TRUST_THRESHOLD == default("label_threshold")
    # --label-model offers the label models with published weights (the test one is named
    # by its file, like SAM's vit_tiny).
    assert SETTINGS["label_model"].choices == tuple(
        name for name, model in LABEL_MODELS.items() if model.official is not None)
    assert DEFAULT_LABEL_MODEL in SETTINGS["label_model"].help
    assert DEFAULT_SERVER.endswith(f":{DEFAULT_PORT}")


def test_profiles_accept_exactly_the_settings_the_table_allows():
    assert tuple(PROFILE_CHECKS) == PROFILE_SETTINGS
    assert PROFILE_SETTINGS == ("root", "lease_seconds", "poll_seconds", "servers",
                                "connect_timeout_seconds", "read_timeout_seconds", "retries",
                                "backoff_seconds", "server_process_name", "shared_secret_env",
                                "certificate", "tls_server_name", "notify_urls",
                                "notify_format", "status_seconds", "max_consecutive_failures",
                                "max_failing_seconds", "probe_seconds", "retire_after_seconds",
                                "seed_offset", "grid_intensity")


def test_readme_lists_every_option_every_script_takes_with_its_default():
    rows = [line for line in section("Options every script takes").splitlines()
            if line.startswith("| `--")]
    listed = {}
    for row in rows:
        first_cell = row.split("|")[1]
        for flag in re.findall(r"--[a-z-]+", first_cell):
            listed[flag] = row
    names = SHARE + RUN + SERVER + ("watch_retry_seconds",)
    assert set(listed) == {SETTINGS[name].option for name in names}
    for name in names:
        setting = SETTINGS[name]
        if setting.default is None or setting.kind == "switch":
            continue
        row = listed[setting.option]
        assert re.search(rf"default\W+{re.escape(format_value(setting.default))}\b", row), row


def test_readme_names_the_profile_settings_in_the_tables_order():
    text = " ".join(section("Configuration: drawpipe.toml").split())
    match = re.search(r"Settings: (.*?)\. Command-line flags", text)
    assert match
    assert tuple(re.findall(r"`(\w+)`", match.group(1))) == PROFILE_SETTINGS


def test_readme_lists_the_night_at_a_glance_options_with_their_defaults():
    rows = [line for line in section("The night at a glance: status, messages, pause and drain")
            .splitlines() if line.startswith("| `--")]
    listed = {re.findall(r"--[a-z-]+", row.split("|")[1])[0]: row for row in rows}
    assert set(listed) == {SETTINGS[name].option for name in GLANCE + QUARANTINE}
    for name in GLANCE + QUARANTINE:
        setting = SETTINGS[name]
        if setting.default not in (None, ()) and setting.kind != "switch":
            row = listed[setting.option]
            assert re.search(rf"default\W+{re.escape(format_value(setting.default))}\b", row), row


def test_the_engine_takes_its_quarantine_defaults_from_the_table():
    quarantine = EngineSettings(root=PROJECT_DIR).quarantine
    assert (quarantine.after_failures, quarantine.after_seconds, quarantine.probe_seconds,
            quarantine.retire_after_seconds) == tuple(default(name) for name in QUARANTINE)
    assert EngineSettings(root=PROJECT_DIR).status_seconds == default("status_seconds")


def test_readme_gives_segment_options_with_their_defaults():
    text = " ".join(section("segment.py: Segment Anything cut-outs").split())
    for name in GENERATOR + OBJECTS + LABELS + CUTOUTS:
        setting = SETTINGS[name]
        assert f"`{setting.option}" in text, setting.option
        if setting.default is not None and setting.kind != "switch":
            assert f"`{setting.option}` ({format_value(setting.default)}" in text, setting.option


@pytest.mark.parametrize("script, names", [
    ("generate.py", ("seed_offset",) + SHARE + RUN + SERVER + QUARANTINE + GLANCE),
    ("upscale.py", WATCH + ("seed_offset", "settle_seconds") + SHARE + RUN + SERVER + QUARANTINE
     + GLANCE),
    ("segment.py", ("device", "precision") + GENERATOR + OBJECTS + LABELS + CUTOUTS + WATCH + SHARE
     + RUN + GLANCE),
])
def test_each_script_offers_its_settings_with_the_tables_help(script, names):
    result = subprocess.run([sys.executable, str(PROJECT_DIR / script), "--help"],
                            capture_output=True, text=True, cwd=PROJECT_DIR, timeout=60,
                            env={"COLUMNS": "1000", "PATH": ""})
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    for name in names:
        setting = SETTINGS[name]
        assert setting.option in shown, setting.option
        expected = setting.help.replace("{default}", format_value(setting.default))
        if "{folder}" in expected:
            continue
        assert " ".join(expected.split()) in shown, setting.option
