"""Deterministic volume preprocessing shared by training, evaluation and prediction.

Images arrive channel-first, ``(C, X, Y, Z)``; every intensity mode that
estimates statistics from the image does so per channel, so each MRI sequence
of a multi-modal case is normalised on its own scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from monai.transforms import (
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from manifold_nas.errors import UserInputError

__all__ = ["INTENSITY_MODES", "KEYS", "RAS_LABELS", "VolumePreprocessing"]

KEYS = ("image", "label")
INTENSITY_MODES = ("percentile", "zscore", "range", "none")
#: nibabel/MONAI axis-code convention: "R" = increasing towards the right
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class VolumePreprocessing:
    """Deterministic preprocessing shared by training, evaluation and prediction.

    ``intensity`` (``x_c`` is channel ``c`` of one image):

    * ``"percentile"``: ``x_c ↦ clip((x_c − p_lo(x_c)) / (p_hi(x_c) − p_lo(x_c)), 0, 1)``
      with ``(p_lo, p_hi)`` the ``percentiles`` of that channel alone
      (modality-agnostic; MRI);
    * ``"zscore"``: ``x_c ↦ (x_c − μ_c) / σ_c`` with the mean and standard
      deviation of the channel's non-zero voxels; zero voxels (the background
      of skull-stripped MRI) stay 0, as in MONAI's BraTS recipe;
    * ``"range"``: the fixed window ``intensity_range = (a_min, a_max)``
      mapped to [0, 1] and clipped (CT, in HU); the same window for every channel;
    * ``"none"``: intensities as stored.
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
        """The intensity step for channel-first images under ``keys`` (empty for ``"none"``)."""
        if self.intensity == "percentile":
            lower, upper = self.percentiles
            return [
                ScaleIntensityRangePercentilesd(
                    keys, lower, upper, 0.0, 1.0, clip=True, channel_wise=True
                )
            ]
        if self.intensity == "zscore":
            return [NormalizeIntensityd(keys, nonzero=True, channel_wise=True)]
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
        """The settings as plain values (stored in a run and read back by prediction)."""
        return asdict(self)
