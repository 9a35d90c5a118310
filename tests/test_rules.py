"""docs/rules.md lists every rule id, and every rule id used in the code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from ovfstream.rules import ALL_RULES, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_rules_up_to_date():
    assert (ROOT / "docs" / "rules.md").read_text() == render_markdown(), \
        "run: python -m ovfstream.rules > docs/rules.md"


def test_every_rule_in_code_is_documented():
    used: set[str] = set()
    for path in (ROOT / "src" / "ovfstream").rglob("*.py"):
        for rule in re.findall(r'(?:Finding|Error)\(\s*"((?:vmdk|ova|mf|cert|ovf|disk|source)\.[a-z0-9_.]+)"',
                               path.read_text()):
            used.add(rule)
    assert used, "the pattern found no rule ids: the test would pass vacuously"
    assert sorted(used - set(ALL_RULES)) == []
