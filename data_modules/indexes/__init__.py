"""Registry of dataset indexes: ``build_index(name, root, **kw) -> list[VideoRecord]``.

Each index lists the videos (or frame folders) of one benchmark in its on-disk layout as
downloaded and returns :class:`~deepfakemae.records.VideoRecord` s sorted by key, keys unique.
All take ``split`` (``train``/``val``/``test``/``all``) and ``allow_missing``; the rest:

========================  ==================================================================
``ffpp``                  ``compression`` (raw/c23/c40), ``methods``, ``splits_dir``, ``dfd_split``
``celebdf``               ``test_list``
``wilddeepfake``          ``extract``
``dfdc``                  ``test_labels``
========================  ==================================================================
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from data_modules.indexes.celebdf import index_celebdf
from data_modules.indexes.common import DatasetError, DatasetWarning, safe_join
from data_modules.indexes.dfdc import index_dfdc
from data_modules.indexes.ffpp import index_demo, index_ffpp, load_split_pairs, pair_videos
from data_modules.indexes.wilddeepfake import extract_archive, index_wilddeepfake
from deepfakemae.records import VideoRecord

IndexFn = Callable[..., list[VideoRecord]]

#: name -> index function ``fn(root, split="all", **options) -> list[VideoRecord]``
INDEXES: dict[str, IndexFn] = {
    "ffpp": index_ffpp,
    "celebdf": index_celebdf,
    "wilddeepfake": index_wilddeepfake,
    "dfdc": index_dfdc,
    "demo": index_demo,
}


def list_indexes() -> list[str]:
    """Names accepted by :func:`build_index`, sorted."""
    return sorted(INDEXES)


def index_options(name: str) -> list[str]:
    """The keyword options index ``name`` accepts besides ``root``."""
    return [p for p in inspect.signature(_lookup(name)).parameters if p != "root"]


def _lookup(name: str) -> IndexFn:
    if name not in INDEXES:
        raise ValueError(f"unknown dataset {name!r}; known: {list_indexes()}")
    return INDEXES[name]


def build_index(name: str, root: str | os.PathLike, **kw) -> list[VideoRecord]:
    """Records of dataset ``name`` under ``root``; ``kw`` go to the index (e.g. ``split``).

    Unknown options raise :class:`ValueError` listing the ones this dataset takes.
    """
    fn = _lookup(name)
    unknown = sorted(set(kw) - set(index_options(name)))
    if unknown:
        raise ValueError(f"dataset {name!r} does not take option(s) {unknown}; "
                         f"it takes {index_options(name)}")
    return fn(root, **kw)


def records_for_dataset(name: str, root: str | os.PathLike, split: str = "all",
                        **kw) -> list[VideoRecord]:
    """What ``deepfakemae preprocess --dataset NAME --root ROOT`` feeds the face pipeline.

    Like :func:`build_index`, but options given as ``None`` (CLI flags left unset) are dropped so
    the dataset's defaults apply, and an option the dataset does not take raises a
    :class:`ValueError` naming the flag (e.g. ``--compression`` for ``celebdf``).
    """
    given = {k: v for k, v in kw.items() if v is not None}
    fn = _lookup(name)
    unknown = sorted(set(given) - set(index_options(name)))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{flags} do(es) not apply to --dataset {name}; it takes "
                         f"{['--' + o.replace('_', '-') for o in index_options(name)]}")
    return fn(root, split=split, **given)


__all__ = [
    "INDEXES",
    "DatasetError",
    "DatasetWarning",
    "VideoRecord",
    "build_index",
    "extract_archive",
    "index_celebdf",
    "index_dfdc",
    "index_ffpp",
    "index_options",
    "index_wilddeepfake",
    "list_indexes",
    "load_split_pairs",
    "pair_videos",
    "records_for_dataset",
    "safe_join",
]
