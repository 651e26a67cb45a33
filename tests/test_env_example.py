"""Every environment variable the settings read is listed in .env.example."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_setting_variable():
    source = (ROOT / "portal" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', source))
    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read, "the settings read no variables?"
    assert read - listed == set()


def test_compose_passes_every_setting_variable():
    source = (ROOT / "portal" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', source))
    compose = (ROOT / "docker-compose.yml").read_text()
    passed = set(re.findall(r"^\s+- ([A-Z_]+)(?:=|$)", compose, re.M))
    # PORTAL_VAR_DIR and PORT are fixed by the image; the rest must reach the containers.
    assert read - passed - {"PORTAL_VAR_DIR", "PORT"} == set()
