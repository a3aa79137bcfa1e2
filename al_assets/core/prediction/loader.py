"""Decode a shard's images in DataLoader worker processes, keeping failures as data.

A corrupt or missing image must not stop a shard of thousands: each item carries either the
decoded tensor or the reason it failed, and the runner turns failures into error rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from al_assets.core.errors import AlAssetsError
from al_assets.core.images import DEFAULT_MAX_PIXELS, decode_rgb, ingested_limit
from al_assets.core.storage.objects import ObjectStore
from al_assets.core.storage.s3 import S3Settings


@dataclass
class LoadedImage:
    index: int  # row in the shard's image table
    tensor: torch.Tensor | None  # uint8 (3, H, W)
    stage: str = ""  # read | decode, when tensor is None
    error: str = ""


class ShardImages(Dataset):
    """Rows (uri, width, height) of one shard; ``__getitem__`` reads and decodes one image.

    The bomb guard of a row is ``ingested_limit``: ingestion verified the file at its size."""

    def __init__(
        self, images: pa.Table, s3: S3Settings | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.uris = images["uri"].to_pylist()
        self.sizes = list(zip(images["width"].to_pylist(), images["height"].to_pylist(), strict=True))
        self.s3 = s3
        self.max_pixels = max_pixels
        self._objects: ObjectStore | None = None

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> LoadedImage:
        if self._objects is None:  # one client per worker process, built after the fork
            self._objects = ObjectStore(self.s3)
        uri = self.uris[index]
        try:
            data = self._objects.read_bytes(uri)
        except (FileNotFoundError, AlAssetsError, OSError) as exc:
            return LoadedImage(index, None, "read", str(exc))
        try:
            size = self.sizes[index]
            tensor = decode_rgb(data, uri, expected_size=size,
                                max_pixels=ingested_limit(size, self.max_pixels))
        except AlAssetsError as exc:
            return LoadedImage(index, None, "decode", str(exc))
        return LoadedImage(index, tensor)


def make_loader(dataset: ShardImages, *, batch_size: int, num_workers: int) -> DataLoader:
    """Batches of ``LoadedImage`` lists, in shard order, decoded ahead by worker processes."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=list,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )
