"""The record every dataset index yields: one input video (or frame folder) with its labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass

REAL, FAKE = 0, 1
REAL_METHOD = "real"


@dataclass(frozen=True)
class VideoRecord:
    """One input of a dataset index.

    ``key`` is unique across datasets, compressions and methods, e.g.
    ``ffpp/c23/Deepfakes/000_003`` (never a bare file name: FF++ fakes share names across
    methods); it is also the video's entry name in the face cache. ``method`` is ``"real"`` for
    real videos, else the manipulation method (the meta-learning domain).
    """

    key: str
    path: str
    label: int  # 0 real, 1 fake
    dataset: str
    method: str
    split: str  # train | val | test

    def as_meta(self) -> dict:
        """The fields stored with the video's cache entry and manifest line."""
        return asdict(self)
