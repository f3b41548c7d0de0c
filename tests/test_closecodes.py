"""The close codes on the wire are the contract's: ``gateway/closecodes.py`` holds exactly the table of
docs/architecture.md §2, so the tests that compare close codes with its names test the numbers too."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import closecodes

ARCHITECTURE = Path(__file__).parent.parent / "docs" / "architecture.md"


def test_closecodes_are_the_documented_table() -> None:
    documented = {
        name: int(code)
        for code, name in re.findall(r"^\| (\d{4}) \| `([A-Z_]+)` \|", ARCHITECTURE.read_text(), re.M)
    }
    defined = {
        name: value for name, value in vars(closecodes).items() if name.isupper() and isinstance(value, int)
    }
    assert documented and defined == documented
