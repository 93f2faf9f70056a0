"""A picklable object whose unpickling has a side effect (creates a file): what a malicious checkpoint would do.
test_tools.py checks that tools/finetune.py never runs it (weights-only reading)."""
from __future__ import annotations

from pathlib import Path


def _touch(path: str):
    Path(path).write_text("unpickling ran code")
    return {}


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)
