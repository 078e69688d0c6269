"""Deterministic volume preprocessing shared by training, evaluation and prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from monai.transforms import (
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from manifold_nas.errors import UserInputError

__all__ = ["INTENSITY_MODES", "KEYS", "RAS_LABELS", "VolumePreprocessing"]

KEYS = ("image", "label")
INTENSITY_MODES = ("percentile", "range", "none")
#: nibabel/MONAI axis-code convention: "R" = increasing towards the right
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class VolumePreprocessing:
    """Deterministic preprocessing shared by training, evaluation and prediction.

    ``intensity``: ``"percentile"`` maps the ``percentiles`` of each image to
    [0, 1] (modality-agnostic, MRI); ``"range"`` maps the fixed window
    ``intensity_range = (a_min, a_max)`` to [0, 1] (CT, in HU); both clip.
    ``"none"`` leaves intensities as stored.
    """

    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = None
    intensity: str = "percentile"
    intensity_range: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise UserInputError(
                f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}"
            )
        if self.intensity == "range" and (
            self.intensity_range is None or len(self.intensity_range) != 2
        ):
            raise UserInputError("intensity 'range' needs intensity_range: [a_min, a_max]")

    def intensity_transform(self, keys: str | Sequence[str] = "image") -> list[MapTransform]:
        if self.intensity == "percentile":
            lower, upper = self.percentiles
            return [ScaleIntensityRangePercentilesd(keys, lower, upper, 0.0, 1.0, clip=True)]
        if self.intensity == "range":
            a_min, a_max = self.intensity_range
            return [ScaleIntensityRanged(keys, a_min, a_max, 0.0, 1.0, clip=True)]
        return []

    def transforms(self, keys: Sequence[str] = KEYS) -> list[MapTransform]:
        """Load, channel-first, reorient, optionally resample, scale intensity."""
        steps: list[MapTransform] = [
            LoadImaged(keys, reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys),
        ]
        if self.orientation is not None:
            steps.append(Orientationd(keys, axcodes=self.orientation, labels=RAS_LABELS))
        if self.spacing is not None:
            modes = tuple("nearest" if key == "label" else "bilinear" for key in keys)
            steps.append(Spacingd(keys, pixdim=self.spacing, mode=modes))
        return steps + self.intensity_transform("image")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
