"""Where test samples come from, in arrival order: StreamSample(name, points, label, error) iterators.

  files_source(paths)       files in the given order (any format ``pcmae.io.load_points`` reads);
  folder_source(folder)     a folder being written to: the files there, then each new one as it appears, until no
                            new file came for ``timeout_s`` seconds (or the stop file appears, or Ctrl-C);
  dataset_source(dataset)   the items of a dataset ({"points", "label"}), e.g. CorruptedObjects;
  any iterator of StreamSample works as well (a ROS bag topic: tools/tta.py --bag).
A file that cannot be read becomes a sample with ``error`` set (reported and skipped by run_stream).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from pcmae.io import SUPPORTED_EXTENSIONS, load_points

FILE_ERRORS = (OSError, ValueError)  # PointCloudFormatError is a ValueError


@dataclass
class StreamSample:
    name: str
    points: Any = None            # (N, >=3) array or tensor
    label: Optional[int] = None
    error: Optional[str] = None   # why the sample could not be read


def read_sample(path: Path, layout: Optional[str] = None) -> StreamSample:
    try:
        kwargs = {"layout": layout} if path.suffix.lower() == ".bin" else {}
        return StreamSample(str(path), load_points(path, **kwargs))
    except FILE_ERRORS as err:
        return StreamSample(str(path), error=f"{type(err).__name__}: {err}")


def files_source(paths: Iterable, layout: Optional[str] = None) -> Iterator[StreamSample]:
    for path in paths:
        yield read_sample(Path(path), layout)


def folder_source(folder, layout: Optional[str] = None, timeout_s: float = 10.0, poll_s: float = 0.2,
                  stop_file: str = "STOP") -> Iterator[StreamSample]:
    """Point-cloud files of ``folder`` oldest first, then new ones as they are written (a file is taken once its
    size stopped changing between two polls). Ends after ``timeout_s`` without a new file, when ``stop_file``
    appears in the folder, or on KeyboardInterrupt."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"stream folder not found: {folder}")
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    last_new = time.monotonic()
    try:
        while not (folder / stop_file).exists():
            ready = []
            for path in folder.iterdir():
                if path.name in seen or path.suffix.lower() not in SUPPORTED_EXTENSIONS or path.name.startswith("."):
                    continue
                size = path.stat().st_size
                if sizes.get(path.name) == size:
                    ready.append(path)
                sizes[path.name] = size
            for path in sorted(ready, key=lambda p: (p.stat().st_mtime, p.name)):
                seen.add(path.name)
                last_new = time.monotonic()
                yield read_sample(path, layout)
            if time.monotonic() - last_new > timeout_s:
                return
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return


def dataset_source(dataset, limit: Optional[int] = None, start: int = 0,
                   name: Optional[str] = None) -> Iterator[StreamSample]:
    """Items ``start, start + 1, ...`` of ``dataset`` in index order (up to ``limit`` of them), named
    ``<name>[index]`` (default name: the dataset's class)."""
    name = name or type(dataset).__name__
    stop = len(dataset) if limit is None else min(start + limit, len(dataset))
    for index in range(start, stop):
        item = dataset[index]
        label = item.get("label")
        yield StreamSample(f"{name}[{index}]", item["points"], None if label is None else int(label))
