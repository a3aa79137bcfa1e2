"""Train a torchvision detector on a COCO dataset, on CPU, reproducibly.

Why here: offline, no pretrained detector can be downloaded, so the demo and every
active-learning round train their own (from scratch, or warm-started from the previous round's
checkpoint). The loop is torchvision's detection API (``model(images, targets)`` returns the
losses) with the small pieces it leaves out: a COCO dataset, flips, seeding, a warmup + cosine
schedule, thread settings, images read from any URI (``file://``, ``s3://``) and resuming.

Resuming (``checkpoint_dir=``): training runs in worker processes that can be killed (out of
memory, a preempted machine, a redeploy), and a restart should not throw away an hour of steps.
Every ``checkpoint_every`` steps the full state (model, optimizer, schedule, batch order, random
generators) is written atomically to ``checkpoint_dir/train_state.pt`` with a fingerprint of the
run (settings, COCO file, init checkpoint). A call that finds a file with its own fingerprint
continues after that step and returns exactly the model an uninterrupted run (with the same
threads) would have; any other file (another run's, or damaged) is warned about, deleted, and
training starts at step 1.
The file is removed after the last step and the caller saves the final checkpoint, so a killed
run leaves only ``train_state.pt``, never a half-trained model that could be registered as done.

Measured on this project's 2-core VM (ssdlite320 from scratch, 320x320 shape images, 5
classes): SGD momentum 0.9, lr 0.05, warmup + cosine reached COCO mAP 0.81 (AP50 0.96) after
250 steps of batch 8 (2000 images, about 4 minutes); AdamW lr 1e-3 reached 0.67 on the same
budget, so SGD is the default.

CPU speed depends on the memory allocator: detection training allocates and frees large,
differently shaped buffers every step, and glibc's default gives them back to the OS (mmap for
big blocks, heap trimming), so each step faults them in again (about 120,000 page faults per
ssdlite step at batch 16). Keeping freed memory in the process removes the faults: training
went from 6.8 to 7.9 images/s on a quiet machine and from 1.0 to 1.4 (median) with other jobs
on the same cores, where the default allocator also produced 10-50 s outlier steps; inference
(batch 8) went from 17 to 30-35 images/s. Either start the process with
``RECOMMENDED_MALLOC_ENV``::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 python ...

or let ``train_detector(tune_malloc=True)`` (the default) apply the same settings to the running
process with glibc's ``mallopt`` (``keep_freed_memory()``), which measured the same. The cost:
the process keeps its peak heap (about 3.5 GB for ssdlite at batch 16) until it exits, so train
in a worker process.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor, nn

from al_assets.core.defaults import DEFAULT_ARCH
from al_assets.core.coco.reader import coco_index, read_coco_json
from al_assets.core.detection.categories import CategoryError, CategoryMap
from al_assets.core.detection.factory import build_detector, load_checkpoint
from al_assets.core.errors import AlAssetsError, CocoFormatError, ImageDecodeError, StorageError
from al_assets.core.images import decode_rgb, ingested_limit
from al_assets.core.storage.files import write_bytes_atomic
from al_assets.core.storage.objects import ObjectStore, is_s3, join_uri, local_path, to_uri

RECOMMENDED_MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
"""glibc malloc settings that keep freed training buffers in the process (see module doc)."""

DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
"""Peak learning rates from scratch; a warm start uses a fifth of them (FINETUNE_LR_FACTOR)."""
FINETUNE_LR_FACTOR = 0.2
DEFAULT_WEIGHT_DECAY = 4e-5
Batch = tuple[list[Tensor], list[dict[str, Tensor]]]
_OPTIMIZERS = ("sgd", "adamw")
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc malloc.h
TRAIN_STATE_NAME = "train_state.pt"
"""File in ``train_detector(checkpoint_dir=...)`` that holds a run's resumable state."""
_TRAIN_STATE_VERSION = b"al_assets train_state v1"


class DatasetError(CocoFormatError, ValueError):
    """A COCO file that cannot be used for training or evaluation."""


class TrainingError(AlAssetsError, RuntimeError):
    """Training that cannot go on (diverged loss, no readable image)."""


@dataclass(frozen=True)
class CocoRecord:
    """One image and its non-crowd boxes (xyxy pixels) as dataset category ids.

    ``uri`` is where the image is read from (``file://`` or ``s3://``); ``path`` is its local
    file (for an ``s3://`` image only the URI as a path: use ``location`` in messages).
    """

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    category_ids: tuple[int, ...]
    uri: str

    @property
    def location(self) -> str:
        """The local path, or the URI of an S3 image: what messages name."""
        return self.uri if is_s3(self.uri) else str(self.path)


class CocoDetectionDataset:
    """COCO instances file + image folder as torchvision detection samples.

    ``image_dir``: a local folder, or a ``file://`` / ``s3://`` URI (``s3://`` needs
    ``objects``). A ``file_name`` that is itself a ``file://`` or ``s3://`` URI is used as is, so
    one COCO file can list images from several folders. With ``objects`` every image is read
    through ``objects.read_bytes(uri)``; without, from the local file.

    Crowd annotations are left out of the targets (torchvision has no ``iscrowd`` handling in
    training and COCOeval ignores them); zero-area boxes too (torchvision rejects them). Images
    without boxes stay: they teach the background.
    """

    def __init__(
        self, coco_json: Path, image_dir: Path | str, objects: ObjectStore | None = None
    ) -> None:
        self.coco_json = Path(coco_json)
        self.objects = objects
        self.image_root_uri = to_uri(image_dir)
        self.image_dir: Path | None = (
            None if is_s3(self.image_root_uri) else local_path(str(image_dir))
        )
        self.coco = read_coco(self.coco_json)
        try:
            self.categories = CategoryMap.from_coco_categories(self.coco.dataset["categories"])
        except (CategoryError, KeyError) as exc:
            raise DatasetError(f"{self.coco_json}: bad or missing categories: {exc}") from exc
        self.records = [self._record(image_id) for image_id in sorted(self.coco.getImgIds())]
        remote = next((r.uri for r in self.records if is_s3(r.uri)), None)
        if remote is not None and objects is None:
            raise DatasetError(
                f"{self.coco_json} lists S3 images (e.g. {remote}); pass objects=ObjectStore(...) "
                "to read them"
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.load_image(index), self.target(index)

    def load_image(self, index: int) -> Tensor:
        """Float RGB tensor (3, H, W) in [0, 1]; ImageDecodeError names the file and the cause.

        Decoding is ``al_assets.core.images.decode_rgb``'s, the one prediction uses, so the
        model trains on pixels exactly as it will later see them (EXIF, 16-bit, alpha, ...).
        """
        record = self.records[index]
        size = (record.width, record.height)
        return decode_rgb(self._read(record), record.location, expected_size=size,
                          max_pixels=ingested_limit(size)).float().div_(255)

    def _read(self, record: CocoRecord) -> bytes:
        try:
            if self.objects is not None:
                return self.objects.read_bytes(record.uri)
            return record.path.read_bytes()
        except (OSError, StorageError) as exc:
            raise ImageDecodeError(f"{record.location}: cannot read the file ({exc})") from exc

    def target(self, index: int) -> dict[str, Tensor]:
        """torchvision target: ``boxes`` float32 (N, 4) xyxy, ``labels`` int64 model labels."""
        record = self.records[index]
        return {
            "boxes": torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": self.categories.labels_of(record.category_ids),
        }

    def _record(self, image_id: int) -> CocoRecord:
        info = self.coco.imgs[image_id]
        boxes, category_ids = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                continue
            if int(ann["category_id"]) not in self.categories.category_ids:
                raise DatasetError(
                    f"{self.coco_json}: annotation {ann.get('id')} has category_id "
                    f"{ann['category_id']}, which is not in 'categories'"
                )
            boxes.append((x, y, x + w, y + h))
            category_ids.append(int(ann["category_id"]))
        path, uri = self._locate(str(info["file_name"]))
        return CocoRecord(
            image_id=int(image_id),
            path=path,
            width=int(info["width"]),
            height=int(info["height"]),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            category_ids=tuple(category_ids),
            uri=uri,
        )

    def _locate(self, file_name: str) -> tuple[Path, str]:
        """(local path, URI) of an image: a URI file_name as is, else under the image root."""
        if file_name.startswith(("file://", "s3://")):
            uri = file_name
        elif self.image_dir is not None:
            path = self.image_dir / file_name
            return path, to_uri(path)
        else:
            uri = join_uri(self.image_root_uri, file_name)
        return (Path(uri) if is_s3(uri) else local_path(uri)), uri


def train_detector(
    coco_json: Path,
    image_dir: Path | str,
    *,
    arch: str = DEFAULT_ARCH,
    steps: int,
    batch_size: int = 16,
    lr: float | None = None,
    optimizer: str = "sgd",
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    warmup_steps: int | None = None,
    seed: int = 0,
    init_checkpoint: Path | None = None,
    num_threads: int | None = None,
    tune_malloc: bool = True,
    log: Callable[[dict], None] | None = None,
    log_every: int = 10,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 50,
    objects: ObjectStore | None = None,
) -> nn.Module:
    """Train ``arch`` for ``steps`` optimizer steps; returns the model in eval mode.

    ``optimizer``: ``"sgd"`` (momentum 0.9) or ``"adamw"``, both with a linear warmup (default:
    10% of the steps, at most 100) then a cosine decay to 0. ``init_checkpoint`` warm-starts
    from an earlier round, whose categories must equal the dataset's; ``lr`` then defaults to a
    fifth of the from-scratch rate (``DEFAULT_LR``), because the full rate undid part of the
    earlier training (30 fine-tuning steps: mAP 0.815 -> 0.766 at lr 0.05, 0.806 at 0.01).
    Same seed, data and threads give the same model. Unreadable images are skipped, warned
    about, and counted in the log records. ``tune_malloc``: see the module docstring.

    ``checkpoint_dir``: keep ``TRAIN_STATE_NAME`` there every ``checkpoint_every`` steps and
    resume from it (see the module docstring); removed once the last step is done.
    ``objects``: read the images through this store (``image_dir`` may then be an ``s3://`` URI).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must both be >= 1")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {_OPTIMIZERS}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be >= 1")
    dataset = CocoDetectionDataset(coco_json, image_dir, objects)
    if len(dataset) == 0:
        raise DatasetError(f"{coco_json} lists no images; there is nothing to train on")
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps
    settings = {
        "arch": arch, "steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
        "weight_decay": weight_decay, "warmup_steps": warmup, "seed": seed,
    }
    state = None
    if checkpoint_dir is not None:
        fingerprint = run_fingerprint(coco_json, init_checkpoint, settings)
        path = Path(checkpoint_dir) / TRAIN_STATE_NAME
        state = _TrainState(path, fingerprint, checkpoint_every, steps)
    fresh = functools.partial(
        _new_run, dataset, arch, init_checkpoint, optimizer, lr, weight_decay, steps, warmup,
        batch_size, seed,
    )
    if tune_malloc:
        keep_freed_memory()
    with _torch_threads(num_threads):
        run, done = _resume(fresh, state)
        _run_steps(run, steps, log, log_every, done, state)
    if state is not None:
        state.finish()
    return run.model.eval()


def run_fingerprint(
    coco_json: Path, init_checkpoint: Path | None, settings: dict[str, Any]
) -> str:
    """sha256 of what defines a training run: settings, COCO file bytes, init checkpoint bytes."""
    digest = hashlib.sha256(_TRAIN_STATE_VERSION)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in (Path(coco_json), init_checkpoint):
        digest.update(b"\0none" if path is None else b"\0file")
        if path is not None:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Run:
    """Everything a training step changes; ``state_dict`` is what resuming needs back."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: _BatchStream

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.batches.load_state_dict(saved["batches"])
        torch.set_rng_state(saved["torch_rng"])


def _new_run(
    dataset: CocoDetectionDataset,
    arch: str,
    init_checkpoint: Path | None,
    optimizer: str,
    lr: float | None,
    weight_decay: float,
    steps: int,
    warmup: int,
    batch_size: int,
    seed: int,
) -> _Run:
    """A run at step 0: seeded model, optimizer, schedule and batch stream."""
    torch.manual_seed(seed)
    model = _initial_model(arch, dataset.categories, init_checkpoint)
    model.train()
    opt = _optimizer(model, optimizer, lr, weight_decay, init_checkpoint is not None)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup))
    return _Run(model, opt, schedule, _BatchStream(dataset, batch_size, seed))


def _resume(fresh: Callable[[], _Run], state: _TrainState | None) -> tuple[_Run, int]:
    """A new run, moved to the saved step when a matching state exists; (run, steps done)."""
    run = fresh()
    saved = None if state is None else state.load()
    if state is None or saved is None:
        return run, 0
    try:
        run.load_state_dict(saved)
    except Exception as exc:  # a state of the right run but unusable: start over, cleanly
        state.discard(f"cannot be restored ({exc!r})")
        return fresh(), 0
    return run, int(saved["step"])


class _TrainState:
    """``train_state.pt`` of one run: load it if it is this run's, save it, remove it."""

    def __init__(self, path: Path, fingerprint: str, every: int, steps: int) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.every = every
        self.steps = steps

    def load(self) -> dict[str, Any] | None:
        """The saved state of this run, or None (a stale or damaged file is warned of, deleted)."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
            self.discard(f"is unreadable or damaged ({exc!r})")
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            self.discard("is from another run (data, init checkpoint or settings differ)")
            return None
        step = saved.get("step")
        if not isinstance(step, int) or not 1 <= step < self.steps:
            self.discard(f"holds an impossible step {step!r} of {self.steps}")
            return None
        return saved

    def discard(self, why: str) -> None:
        warnings.warn(f"{self.path} {why}; training restarts from step 1", stacklevel=4)
        self.path.unlink(missing_ok=True)

    def after_step(self, step: int, run: _Run) -> None:
        if step % self.every or step >= self.steps:
            return
        buffer = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "step": step, **run.state_dict()}, buffer)
        write_bytes_atomic(self.path, buffer.getvalue())

    def finish(self) -> None:
        """The run is complete: its intermediate state must not be resumed or mistaken for it."""
        self.path.unlink(missing_ok=True)


def malloc_env_is_set() -> bool:
    """Whether this process was started with ``RECOMMENDED_MALLOC_ENV``."""
    return all(os.environ.get(k) == v for k, v in RECOMMENDED_MALLOC_ENV.items())


def keep_freed_memory() -> bool:
    """Apply ``RECOMMENDED_MALLOC_ENV`` to this process through glibc's ``mallopt``.

    Process-wide and permanent: freed memory stays in the process until it exits. Returns False
    (and changes nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # M_MMAP_MAX, M_TRIM_THRESHOLD (a C int: 2 GiB is its maximum), M_TOP_PAD
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))
    return all(mallopt(option, value) == 1 for option, value in settings)


def _optimizer(
    model: nn.Module, name: str, lr: float | None, weight_decay: float, warm_start: bool
) -> torch.optim.Optimizer:
    if lr is None:
        lr = DEFAULT_LR[name] * (FINETUNE_LR_FACTOR if warm_start else 1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def read_coco(coco_json: Path) -> COCO:
    """pycocotools' COCO index of a file, read by the one COCO reader (errors name the file)."""
    coco_json = Path(coco_json)
    if not coco_json.is_file():
        raise DatasetError(f"COCO file {coco_json} does not exist")
    try:
        return coco_index(read_coco_json(coco_json, max_bytes=None))
    except CocoFormatError as exc:
        raise DatasetError(str(exc)) from None
    except Exception as exc:  # pycocotools' index raises key errors on records without ids
        raise DatasetError(f"cannot index COCO file {coco_json}: {exc!r}") from exc


def _initial_model(arch: str, categories: CategoryMap, init_checkpoint: Path | None) -> nn.Module:
    if init_checkpoint is None:
        return build_detector(arch, categories.num_classes)
    ckpt = load_checkpoint(init_checkpoint)
    if ckpt.category_ids is not None and ckpt.category_ids != categories.category_ids:
        raise DatasetError(
            f"{init_checkpoint} was trained on categories {list(ckpt.category_ids)} but the "
            f"dataset has {list(categories.category_ids)}; warm-start only on the same categories"
        )
    return build_detector(arch, categories.num_classes, checkpoint=init_checkpoint)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use every core this process may run on (not the machine's count), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over ``warmup`` steps, then cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _BatchStream:
    """Endless shuffled batches with random horizontal flips, reproducible from the seed."""

    def __init__(self, dataset: CocoDetectionDataset, batch_size: int, seed: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped: dict[str, str] = {}
        self._order: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": list(self._order),
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.generator.set_state(saved["generator"])
        self._order = [int(i) for i in saved["order"]]
        self.skipped = {str(k): str(v) for k, v in saved["skipped"].items()}

    def __next__(self) -> Batch:
        images: list[Tensor] = []
        targets: list[dict[str, Tensor]] = []
        while len(images) < self.batch_size:
            index = self._next_index()
            try:
                image = self.dataset.load_image(index)
            except ImageDecodeError as exc:
                self._skip(index, exc)
                continue
            image, target = _maybe_flip(image, self.dataset.target(index), self.generator)
            images.append(image)
            targets.append(target)
        return images, targets

    def _next_index(self) -> int:
        if not self._order:
            if len(self.skipped) == len(self.dataset):
                raise TrainingError(
                    f"no image of {self.dataset.coco_json} could be read; first problems: "
                    f"{list(self.skipped.values())[:3]}"
                )
            self._order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        return self._order.pop()

    def _skip(self, index: int, exc: ImageDecodeError) -> None:
        location = self.dataset.records[index].location
        if location not in self.skipped:
            warnings.warn(f"skipping image in training: {exc}", stacklevel=2)
        self.skipped[location] = str(exc)


def _maybe_flip(
    image: Tensor, target: dict[str, Tensor], generator: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    if torch.rand((), generator=generator) < 0.5:
        return image, target
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def _run_steps(
    run: _Run,
    steps: int,
    log: Callable[[dict], None] | None,
    log_every: int,
    done: int = 0,
    state: _TrainState | None = None,
) -> None:
    """Steps ``done + 1 .. steps``; the state is saved after a step's log record."""
    start = time.perf_counter()
    resumed: dict[str, int] = {"resumed_from": done} if done else {}
    for step in range(done + 1, steps + 1):
        loss, losses, lr = _step(run, step)
        if log is not None and (step % log_every == 0 or step == steps):
            elapsed = time.perf_counter() - start
            images = (step - done) * run.batches.batch_size
            log({**_log_record(step, steps, loss, losses, lr, run.batches, images, elapsed),
                 **resumed})
            resumed = {}
        if state is not None:
            state.after_step(step, run)


def _step(run: _Run, step: int) -> tuple[Tensor, dict[str, Tensor], float]:
    """One optimizer step; returns the loss, its parts and the learning rate it used."""
    images, targets = next(run.batches)
    losses = run.model(images, targets)
    loss = sum(losses.values())
    lr = run.optimizer.param_groups[0]["lr"]
    if not torch.isfinite(loss):
        raise TrainingError(
            f"loss became {float(loss)} at step {step} ({_floats(losses)}); lower lr "
            f"(now {lr:.4g}) or check the boxes"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.schedule.step()
    return loss, losses, lr


def _log_record(
    step: int,
    steps: int,
    loss: Tensor,
    losses: dict[str, Tensor],
    lr: float,
    batches: _BatchStream,
    images: int,
    elapsed: float,
) -> dict:
    return {
        "step": step,
        "steps": steps,
        "loss": float(loss.detach()),
        **_floats(losses),
        "lr": lr,
        "elapsed_s": elapsed,
        "images_per_s": images / elapsed,
        "skipped_images": len(batches.skipped),
    }


def _floats(losses: dict[str, Tensor]) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in losses.items()}
