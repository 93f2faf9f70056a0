"""List the converters: ``python -m data_converters``; run one with ``python -m data_converters.<name> --help``."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

NOT_CONVERTERS = {"common", "__main__"}


def converters() -> dict:
    """{module name: first docstring line} of the converter modules (those with ``convert_one`` and ``main``)."""
    found = {}
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name in NOT_CONVERTERS or module.name.startswith("_"):
            continue
        try:
            loaded = importlib.import_module(f"data_converters.{module.name}")
        except ImportError as err:  # a converter whose optional dependency is missing still gets listed
            found[module.name] = f"(cannot import: {err})"
            continue
        if hasattr(loaded, "convert_one") and hasattr(loaded, "main"):
            doc = (loaded.__doc__ or "").strip()
            found[module.name] = doc.splitlines()[0] if doc else ""
    return found


if __name__ == "__main__":
    for name, summary in converters().items():
        print(f"python -m data_converters.{name:<10} {summary}")
