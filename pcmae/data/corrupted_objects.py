"""``CorruptedObjects``: any registered object dataset seen through one corruption of ModelNet40-C."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.corruptions import OBJECT_CORRUPTIONS, SEVERITIES
from pcmae.registry import DATASETS, closest


@DATASETS.register
class CorruptedObjects(Dataset):
    """Items ``{"points": (num_points, 3) float32, "label": () int64}`` of ``dataset`` (a config of a
    registered object dataset, e.g. ``{"type": "SyntheticObjects"}``) with ``corruption`` (a name of
    ``OBJECT_CORRUPTIONS``, or None for the clean data) at ``severity`` 1..5.

    Item ``i`` is a pure function of ``(seed, i)``: the corruption draws from a CPU generator seeded by both.
    The corrupted cloud (M points) is then resampled to ``num_points`` from the same generator: M >= num_points
    -> a random subset without replacement; M < num_points -> every point once plus num_points - M drawn
    with replacement (order shuffled). An item whose corruption leaves no point raises ValueError.
    """

    def __init__(self, dataset: Mapping[str, Any], corruption: Optional[str] = None, severity: int = 5,
                 seed: int = 0, num_points: int = 1024):
        if corruption is not None and corruption not in OBJECT_CORRUPTIONS:
            raise ValueError(f"CorruptedObjects: unknown corruption {corruption!r}"
                             f"{closest(str(corruption), OBJECT_CORRUPTIONS)}; known: {', '.join(OBJECT_CORRUPTIONS)}")
        if severity not in SEVERITIES:
            raise ValueError(f"CorruptedObjects: severity must be 1..5, got {severity!r}")
        if num_points < 1:
            raise ValueError(f"CorruptedObjects: num_points must be >= 1, got {num_points}")
        self.dataset = DATASETS.build(dataset, where="CorruptedObjects.dataset")
        self.corruption, self.severity = corruption, int(severity)
        self.seed, self.num_points = int(seed), int(num_points)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, int(index)]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        points = torch.as_tensor(item["points"], dtype=torch.float32)[:, :3]
        generator = self.generator(index)
        if self.corruption is not None:
            points = OBJECT_CORRUPTIONS[self.corruption](points, self.severity, generator)
        if len(points) == 0:
            raise ValueError(f"CorruptedObjects: item {index}: {self.corruption} severity {self.severity} left "
                             f"no points")
        if len(points) >= self.num_points:
            choice = torch.randperm(len(points), generator=generator)[:self.num_points]
        else:
            extra = torch.randint(len(points), (self.num_points - len(points),), generator=generator)
            choice = torch.cat([torch.arange(len(points)), extra])
            choice = choice[torch.randperm(len(choice), generator=generator)]
        return {"points": points[choice].float().contiguous(), "label": torch.as_tensor(item["label"]).long()}
