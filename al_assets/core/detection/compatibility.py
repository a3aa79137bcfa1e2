"""Does a model's category list fit the dataset it will predict on?"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from al_assets.core.errors import AlAssetsError

PLACEHOLDER_NAMES = {"N/A", "__background__"}  # torchvision's COCO label list has gaps named N/A


class CategoryMismatchError(AlAssetsError):
    """The model's classes and the dataset's categories disagree."""


def check_categories(
    model_ids: Sequence[int], model_names: Sequence[str], dataset: pa.Table, *, model: str
) -> list[str]:
    """Raise on an id that names different classes; return warnings for partial overlaps.

    A model may know classes the pool lacks (a COCO model on a subset) and the pool may hold
    classes the model cannot predict; both are reported. The same id meaning two different
    classes would silently mislabel every detection, so that is an error.
    """
    known = {i: n for i, n in zip(model_ids, model_names, strict=True) if n not in PLACEHOLDER_NAMES}
    pool = dict(zip(dataset["category_id"].to_pylist(), dataset["name"].to_pylist(), strict=True))
    conflicts = [f"{i}: model {known[i]!r} vs dataset {pool[i]!r}" for i in known
                 if i in pool and known[i] != pool[i]]
    if conflicts:
        raise CategoryMismatchError(
            f"{model} and the dataset disagree on category ids ({'; '.join(conflicts[:5])}); "
            "register a model trained on this dataset's categories, or fix the annotation file"
        )
    warnings = []
    if missing := sorted(set(pool) - set(known)):
        warnings.append(f"{model} cannot predict dataset categories {missing}")
    if extra := sorted(set(known) - set(pool)):
        warnings.append(f"{model} predicts categories absent from the dataset: {extra}")
    return warnings
