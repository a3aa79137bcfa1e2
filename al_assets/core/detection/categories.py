"""Mapping between a dataset's category ids and a detector's contiguous labels.

torchvision detectors predict labels ``0..K`` with ``0`` the background, while COCO datasets use
their own ids with gaps (``[1, 3, 4, 7, 9]``). Every table al_assets writes uses the dataset's ids,
so the one place that translates is here: model label ``i`` is ``category_ids[i - 1]``. The order
is the dataset's categories sorted by id, so training and inference agree without extra state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from al_assets.core.coco.reader import read_coco_json
from al_assets.core.errors import AlAssetsError, CocoFormatError, StorageError


class CategoryError(AlAssetsError, ValueError):
    """A category list or a category id that cannot be mapped."""


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids in model-label order (label ``i`` is ``category_ids[i - 1]``)."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.category_ids) == 0:
            raise CategoryError("a detector needs at least one category; the list is empty")
        if len(self.names) != len(self.category_ids):
            raise CategoryError(
                f"{len(self.category_ids)} category ids but {len(self.names)} names; "
                "give one name per id"
            )
        duplicates = sorted({c for c in self.category_ids if self.category_ids.count(c) > 1})
        if duplicates:
            raise CategoryError(f"duplicate category ids {duplicates}; each id must appear once")

    @classmethod
    def from_coco_categories(cls, categories: Iterable[dict]) -> CategoryMap:
        """Build the map from COCO ``categories`` records, sorted by id (the training order)."""
        records = sorted(categories, key=lambda c: int(c["id"]))
        return cls(tuple(int(c["id"]) for c in records), tuple(str(c["name"]) for c in records))

    @classmethod
    def from_coco_json(cls, coco_json: Path) -> CategoryMap:
        """Read the ``categories`` section of a COCO instances file."""
        try:
            data = read_coco_json(coco_json)
        except (CocoFormatError, StorageError) as exc:  # malformed, missing, a folder, too big
            raise CategoryError(f"cannot read categories: {exc}") from None
        if not data.get("categories"):
            raise CategoryError(f"{coco_json} has no 'categories'; a detector needs at least one")
        return cls.from_coco_categories(data["categories"])

    @property
    def num_classes(self) -> int:
        """Number of model outputs, background included (torchvision's ``num_classes``)."""
        return len(self.category_ids) + 1

    def label_of(self, category_id: int) -> int:
        """Model label of one dataset category id."""
        try:
            return self.category_ids.index(int(category_id)) + 1
        except ValueError:
            raise CategoryError(
                f"category id {category_id} is not one of the model's categories "
                f"{list(self.category_ids)}"
            ) from None

    def labels_of(self, category_ids: Sequence[int]) -> Tensor:
        """Model labels (int64) of dataset category ids."""
        return torch.tensor([self.label_of(c) for c in category_ids], dtype=torch.int64)

    def category_ids_of(self, labels: Tensor) -> Tensor:
        """Dataset category ids of model labels (any shape); background has no id."""
        lookup = torch.tensor((0,) + self.category_ids, dtype=torch.int64, device=labels.device)
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= len(lookup)):
            raise CategoryError(
                f"model labels must lie in 1..{len(self.category_ids)}, got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        return lookup[labels.long()]
