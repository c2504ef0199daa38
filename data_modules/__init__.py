"""Datasets, samplers and the Lightning data module over face caches.

Public names are re-exported lazily so that importing a light submodule (the dataset indexes)
does not pull in torch, Lightning and albumentations.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks for updates on import

_EXPORTS = {
    "VideoRecord": "deepfakemae.records",
    "REAL": "deepfakemae.records",
    "FAKE": "deepfakemae.records",
    "REAL_METHOD": "deepfakemae.records",
    "SourceSpec": "data_modules.datasets",
    "VideoItem": "data_modules.datasets",
    "DataError": "data_modules.datasets",
    "DatasetError": "data_modules.datasets",
    "FaceClipDataset": "data_modules.datasets",
    "select_videos": "data_modules.datasets",
    "build_domain_map": "data_modules.datasets",
    "FaceAugment": "data_modules.augment",
    "LandmarkHorizontalFlip": "data_modules.augment",
    "build_train_transform": "data_modules.augment",
    "VideoEpochSampler": "data_modules.samplers",
    "BalancedRealFakeSampler": "data_modules.samplers",
    "DeepfakeDataModule": "data_modules.datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_modules' has no attribute {name!r}")
