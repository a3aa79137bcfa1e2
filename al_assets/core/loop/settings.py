"""The loop's training settings: a light module (no torch), so the CLI can build ``train``'s
flags and the ``challenger`` asset its run config from ``TrainSettings``' fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from al_assets.core.errors import AlAssetsError
from al_assets.core.options import option


class LoopError(AlAssetsError, ValueError):
    """A loop step that cannot run as asked (nothing labeled, no held-out ground truth...)."""


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning budget; 2 CPU cores train ssdlite320 at about 7 images/s."""

    steps: int = option(200, "optimizer steps of batch_size images (2 CPU cores: about 1 s "
                        "per step of 8 images for ssdlite320)")
    batch_size: int = option(8, "images per optimizer step")
    lr: float | None = option(None, "peak learning rate (none: a fifth of the from-scratch "
                              "rate, for fine-tuning)")
    seed: int = option(0, "seed of the training order and augmentation")
    checkpoint_every: int = option(25, "resumable state every this many steps: a killed run "
                                   "resumes from the last one")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise LoopError(f"{name} must be >= 1, got {getattr(self, name)}")

    def params(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}
