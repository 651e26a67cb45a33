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
