"""Find the pool image and category a labeling tool's record refers to.

Tools never keep our ids: Label Studio keeps whatever we put in ``data`` but rewrites image
URLs for serving, COCO tools renumber images and categories. So images are matched by the
most specific reference that agrees, in this order (the first rule with a hit decides):

1. the exact pool ``uri`` (``s3://...`` or ``file://...``);
2. the local path of a ``file://`` uri (what :func:`label_studio_tasks` exports by default);
3. the pool ``file_name`` itself;
4. a ``/``-boundary suffix of the pool uri's path, e.g. Label Studio's local-files
   ``/data/local-files/?d=images/a.jpg`` or a presigned ``https://bucket.s3.../key?...``;
5. the pool ``file_name`` as a ``/``-boundary suffix of the reference (the longest wins).

A rule that hits several images is ambiguous and matches nothing. Categories match by name.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

import pyarrow as pa

from al_assets.core.queue.exports import category_names
from al_assets.core.schemas import require_columns
from al_assets.core.storage.objects import is_s3, local_path

IMAGE_COLUMNS = ("image_id", "file_name", "uri", "width", "height")


@dataclass(frozen=True)
class PoolImage:
    image_id: int
    file_name: str
    uri: str
    width: int
    height: int


@dataclass(frozen=True)
class PoolCategory:
    category_id: int
    name: str
    supercategory: str | None


@dataclass(frozen=True)
class Match:
    """The pool images a reference matches: exactly one is a match, none or several are not."""

    image_ids: tuple[int, ...]

    @property
    def image_id(self) -> int | None:
        return self.image_ids[0] if len(self.image_ids) == 1 else None


class Pool:
    """Indexes of the pool's IMAGES and CATEGORIES for matching a label file's records."""

    def __init__(self, images: pa.Table, categories: pa.Table) -> None:
        self.images = _pool_images(images)
        self.categories = _pool_categories(categories)
        self._by_uri: dict[str, list[int]] = defaultdict(list)
        self._by_path: dict[str, list[int]] = defaultdict(list)
        self._by_file_name: dict[str, list[int]] = defaultdict(list)
        self._path_by_base: dict[str, list[int]] = defaultdict(list)
        self._name_by_base: dict[str, list[int]] = defaultdict(list)
        self._paths: dict[int, str] = {}
        for image in self.images.values():
            self._index(image)

    def _index(self, image: PoolImage) -> None:
        path = uri_path(image.uri)
        file_name = image.file_name.replace("\\", "/")
        self._paths[image.image_id] = path
        self._by_uri[image.uri].append(image.image_id)
        self._by_path[path].append(image.image_id)
        self._by_file_name[file_name].append(image.image_id)
        self._path_by_base[_basename(path)].append(image.image_id)
        self._name_by_base[_basename(file_name)].append(image.image_id)

    @property
    def category_names(self) -> list[str]:
        return sorted(self.categories)

    def match(self, reference: str) -> Match:
        """The pool images ``reference`` (a URI, URL, path or file name) denotes."""
        if self._by_uri.get(reference):
            return Match(tuple(self._by_uri[reference]))
        path = reference_path(reference)
        for found in (self._by_path.get(path), self._by_file_name.get(path)):
            if found:
                return Match(tuple(found))
        for finder in (self._suffix_of_pool_path, self._file_name_suffix):
            found = finder(path)
            if found:
                return Match(tuple(found))
        return Match(())

    def _suffix_of_pool_path(self, path: str) -> list[int]:
        tail = path.lstrip("/")
        if not tail:
            return []
        return [
            i for i in self._path_by_base.get(_basename(tail), [])
            if self._paths[i] == tail or self._paths[i].endswith("/" + tail)
        ]

    def _file_name_suffix(self, path: str) -> list[int]:
        found = [
            i for i in self._name_by_base.get(_basename(path), [])
            if _ends_with(path, self.images[i].file_name.replace("\\", "/"))
        ]
        if not found:
            return []
        longest = max(len(self.images[i].file_name) for i in found)
        return [i for i in found if len(self.images[i].file_name) == longest]


def uri_path(uri: str) -> str:
    """The path part of a pool uri: the local path, or ``bucket/key`` for S3."""
    if is_s3(uri):
        return uri[len("s3://"):]
    return local_path(uri).as_posix()


def reference_path(reference: str) -> str:
    """The path a tool's image reference points at, whatever URL dressing it wears."""
    text = reference.strip().replace("\\", "/")
    if text.startswith("file://"):
        return local_path(text).as_posix()
    if is_s3(text):
        return text[len("s3://"):]
    parsed = urlparse(text)
    local_files = parse_qs(parsed.query).get("d")
    if local_files and parsed.path.rstrip("/").endswith("local-files"):
        return local_files[0].replace("\\", "/")  # parse_qs already url-decoded it
    if parsed.scheme in ("http", "https"):
        return unquote(parsed.path)
    return text


def _ends_with(path: str, tail: str) -> bool:
    return bool(tail) and (path == tail or path.endswith("/" + tail.lstrip("/")))


def _basename(path: str) -> str:
    return PurePosixPath(path).name


def _pool_images(images: pa.Table) -> dict[int, PoolImage]:
    require_columns(images, IMAGE_COLUMNS, "images", "IMAGES")
    found: dict[int, PoolImage] = {}
    for row in images.select(list(IMAGE_COLUMNS)).to_pylist():
        found.setdefault(row["image_id"], PoolImage(**row))
    return found


def _pool_categories(categories: pa.Table) -> dict[str, PoolCategory]:
    """name -> category over all batches (deduplicated by id); one name, two ids is an error."""
    names = category_names(categories)
    supers: dict[int, str | None] = {}
    if "supercategory" in categories.column_names:
        for cid, sup in zip(categories.column("category_id").to_pylist(),
                            categories.column("supercategory").to_pylist(), strict=True):
            if supers.get(cid) is None:
                supers[cid] = sup
    by_name: dict[str, PoolCategory] = {}
    for cid, name in sorted(names.items()):
        if name in by_name:
            raise ValueError(
                f"categories give the name {name!r} to ids {by_name[name].category_id} and "
                f"{cid}; labels are matched by name, so names must be unique"
            )
        by_name[name] = PoolCategory(cid, name, supers.get(cid))
    return by_name
