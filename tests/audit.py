"""The run-wide privacy audit: nothing secret or personal in logs (INFO and up) or metrics.

Every test that goes through the shared fixtures registers what it handed the gateway — API keys,
session tokens, user IDs, the text users said — and every gateway's final ``/metrics`` page. At the
end of the run ``conftest.pytest_sessionfinish`` fails the run if any of them appears in the log file
or in a metrics page. Short values (``u1``, ``hello``) are not registered: they would match by chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Audit:
    log_path: Path
    secrets: dict[str, str] = field(default_factory=dict)  # value -> kind
    metrics_pages: list[str] = field(default_factory=list)

    def register(self, kind: str, value: object, min_length: int = 8) -> None:
        if isinstance(value, str) and len(value) >= min_length:
            self.secrets.setdefault(value, kind)

    def leaks(self) -> list[str]:
        """One line per leaked value: where, what kind, and a redacted excerpt."""
        places = {"log": self.log_path.read_text(encoding="utf-8", errors="replace")}
        places.update({f"metrics#{i}": page for i, page in enumerate(self.metrics_pages)})
        found = []
        for value, kind in self.secrets.items():
            for where, text in places.items():
                if value in text:
                    found.append(f"{kind} {value[:4]}… found in {where}")
        return found
