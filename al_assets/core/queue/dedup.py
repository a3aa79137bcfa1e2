"""Near-duplicate images by difference hash (dHash), so a queue does not spend labels on copies.

Pools collect bursts of video frames, re-encoded uploads and resized copies. dHash compares
the brightness of neighbouring pixels of a tiny grayscale thumbnail: re-encoding, rescaling
or a shift of a pixel or two leave it (almost) unchanged, while different scenes differ in
about half of its bits. Two images whose hashes differ in at most ``max_distance`` bits are
near-duplicates; clusters are the connected components of that relation (single linkage, so a
chain of small changes ends up in one cluster).

Clustering compares every pair, O(n^2): it is meant for the queue's candidates (the top few
hundred or thousand of the ranking), never for the whole pool. 5,000 candidates take well
under a second since each row of comparisons is one vectorized numpy pass.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from al_assets.core.images import DEFAULT_MAX_PIXELS, read_header
from al_assets.core.storage.objects import ObjectStore

_HIGH_BIT_DEPTH = {"I;16", "I;16B", "I;16L", "I", "F"}
_WORD_BITS = 64


class HashFailure(NamedTuple):
    uri: str
    error: str  # what went wrong, for the run's report


class PerceptualHashes(NamedTuple):
    hashes: dict[str, int]  # uri -> dHash, hash_size**2 bits, row-major
    failures: list[HashFailure]  # images that could not be read or decoded, skipped


def perceptual_hashes(
    uris: Sequence[str],
    objects: ObjectStore,
    *,
    hash_size: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PerceptualHashes:
    """dHash of every image; one unreadable image is reported in ``failures``, never raised.

    A missing, truncated or oversized image only loses its duplicate check, which is no reason
    to stop building a labeling queue.
    """
    if hash_size < 2:
        raise ValueError(f"hash_size must be >= 2, got {hash_size}")
    hashes: dict[str, int] = {}
    failures: list[HashFailure] = []
    for uri in dict.fromkeys(uris):  # each distinct uri once, in input order
        try:
            hashes[uri] = dhash(objects.read_bytes(uri), uri, hash_size, max_pixels)
        except Exception as exc:  # storage, decoding and PIL raise many unrelated types
            failures.append(HashFailure(uri, f"{type(exc).__name__}: {exc}"))
    return PerceptualHashes(hashes, failures)


def dhash(data: bytes, uri: str, hash_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Difference hash of encoded image bytes: bit set where a pixel is darker than its right.

    The header is checked first (decompression-bomb guard), and JPEGs are decoded at a reduced
    scale (PIL ``draft``), so hashing a large photo costs a fraction of a full decode.
    """
    read_header(data, uri, max_pixels)
    with Image.open(io.BytesIO(data)) as img:
        img.draft("L", (4 * (hash_size + 1), 4 * hash_size))  # JPEG only; others ignore it
        gray = _grayscale(img)
    small = gray.resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.int16)
    bits = (pixels[:, :-1] < pixels[:, 1:]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> (-bits.size % 8)


def _grayscale(img: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit and float images scaled by their range, transparency on white."""
    if img.mode in _HIGH_BIT_DEPTH:
        values = np.asarray(img, dtype=np.float64)
        top = max(float(values.max()), 255.0) if values.size else 255.0
        return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return img.convert("L")


def duplicate_clusters(hashes: Mapping[int, int], *, max_distance: int = 4) -> dict[int, int]:
    """image_id -> cluster id (the smallest image_id of its cluster; itself when unique).

    ``hashes`` maps image_id -> dHash (all of one ``hash_size``). Pairs within
    ``max_distance`` differing bits are joined with union-find; O(n^2) comparisons, see the
    module docstring for why that is fine here.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    ids = sorted(hashes)
    words = _hash_words([hashes[i] for i in ids], ids)
    parent = list(range(len(ids)))
    for i in range(len(ids) - 1):
        distances = np.bitwise_count(words[i + 1:] ^ words[i]).sum(axis=1)
        for j in np.flatnonzero(distances <= max_distance) + i + 1:
            _union(parent, i, int(j))
    return {image_id: ids[_find(parent, k)] for k, image_id in enumerate(ids)}


def _hash_words(values: list[int], ids: list[int]) -> np.ndarray:
    """Hashes as an (n, words) uint64 matrix, so XOR and popcount run in numpy."""
    for image_id, value in zip(ids, values):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(
                f"hash of image_id {image_id} is {value!r}; expected a non-negative int from dhash"
            )
    bits = max((int(v).bit_length() for v in values), default=1)
    n_words = max(1, -(-bits // _WORD_BITS))
    mask = (1 << _WORD_BITS) - 1
    rows = [[(int(v) >> (_WORD_BITS * w)) & mask for w in range(n_words)] for v in values]
    return np.array(rows, dtype=np.uint64).reshape(len(values), n_words)


def _find(parent: list[int], k: int) -> int:
    root = k
    while parent[root] != root:
        root = parent[root]
    while parent[k] != root:  # path compression
        parent[k], k = root, parent[k]
    return root


def _union(parent: list[int], a: int, b: int) -> None:
    """Join two sets; the lower index (= smaller image_id) becomes the root."""
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
