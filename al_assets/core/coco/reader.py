"""The one COCO JSON reader: ingestion, training, evaluation and the demo generator call it.

Files of hundreds of MB are the norm (COCO train2017 is 450 MB), so reading is about memory and
time. msgspec decodes straight into Python objects, with no tree of its own in between (orjson's
yyjson tree added 800 MiB on a 366 MB file, more than the 1.3x budget over pycocotools), and the
cyclic GC is paused meanwhile: its collections rescan the millions of containers already built
(3x the decode time, measured). The bytes are dropped as soon as they are decoded.

msgspec is strict JSON. A file it refuses is decoded again by the standard library, which
decides: it accepts what pycocotools' ``json.load`` accepts (NaN and Infinity, lone surrogates,
a BOM, UTF-16) and its errors give line and column, so every file reads as it always did.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from pycocotools.coco import COCO

from al_assets.core.errors import CocoFormatError
from al_assets.core.storage.objects import ObjectStore, to_uri

DEFAULT_MAX_JSON_BYTES = 2 * 1024**3
REQUIRED_KEYS = ("images", "categories")
_DECODER = msgspec.json.Decoder()


def read_coco_json(
    source: str | Path,
    objects: ObjectStore | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_JSON_BYTES,
    missing_hint: str = "check the path",
) -> dict[str, Any]:
    """A COCO instances document from a local path, ``file://`` or ``s3://`` URI.

    Errors are one line that names the file and the fix (:class:`CocoFormatError`); files over
    ``max_bytes`` are refused before reading (:class:`StorageError`).
    """
    name = str(source)
    try:
        data = (objects or ObjectStore()).read_bytes(to_uri(source), max_bytes=max_bytes)
    except FileNotFoundError:
        raise missing_file(name, missing_hint) from None
    return load_json(data, name)


def missing_file(name: str, hint: str) -> CocoFormatError:
    return CocoFormatError(f"annotation file {name} not found (it does not exist): {hint}")


def load_json(data: bytes, source: str) -> dict[str, Any]:
    """Decode and check the top-level COCO structure; errors name the file and the fix."""
    document = decode_json(data, source)
    if not isinstance(document, dict):
        raise CocoFormatError(
            f"{source}: top level is a JSON {type(document).__name__}, expected an object with "
            f"'images', 'annotations' and 'categories' (COCO instances format)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise CocoFormatError(
            f"{source}: not a COCO instances file, missing key(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(document)) or 'nothing'})"
        )
    for key in (*REQUIRED_KEYS, "annotations"):
        if key in document and not isinstance(document[key], list):
            raise CocoFormatError(f"{source}: '{key}' must be a JSON list")
    return document


def decode_json(data: bytes, source: str) -> Any:
    """msgspec when it can (fast, no intermediate tree); the standard library decides the rest."""
    with gc_paused():
        try:
            return _DECODER.decode(data)
        except msgspec.MsgspecError:
            pass  # NaN, lone surrogates, BOM, huge exponents or malformed: json.loads decides
        except RecursionError:
            raise _too_deep(source) from None
        return _stdlib_json(data, source)


def _stdlib_json(data: bytes, source: str) -> Any:
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise CocoFormatError(f"{source}: not UTF-8 text ({exc}); COCO files are UTF-8 JSON")
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{source}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _too_deep(source) from None


def _too_deep(source: str) -> CocoFormatError:
    return CocoFormatError(f"{source}: JSON nested too deeply to decode; a COCO instances file "
                           "is a few levels deep (images, annotations, polygons)")


def coco_index(document: dict[str, Any]) -> COCO:
    """pycocotools' index of a decoded document (``COCO(path)`` without its slow ``json.load``)."""
    coco = COCO()
    coco.dataset = document
    with contextlib.redirect_stdout(io.StringIO()), gc_paused():  # pycocotools prints progress
        coco.createIndex()
    return coco


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while millions of acyclic records are built or walked.

    Each collection would traverse every container alive (the whole document); the records hold
    no reference cycles, so nothing is left for the collector once it runs again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
