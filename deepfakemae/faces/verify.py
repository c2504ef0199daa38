"""``deepfakemae cache verify DIR [--repair]``: check every entry of a face cache.

Each ``.npz`` entry is read in full (zip CRCs), its arrays are checked against the layout and
every JPEG is decoded; each ``.fail.json`` must parse; temporary files and the manifest are
checked too. ``--repair`` removes damaged entries (the next ``preprocess`` run rebuilds them),
sweeps stale temporary files and rewrites the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deepfakemae.faces.cache import DamagedEntryError, FaceCache
from deepfakemae.faces.files import is_stale_tmp


@dataclass
class VerifyReport:
    """What :func:`verify_cache` found (and, with ``repair``, did)."""

    ok: int = 0  # entries that read back in full
    failures: dict[str, int] = field(default_factory=dict)  # recorded failures by status
    damaged: list[tuple[str, str, str]] = field(default_factory=list)  # (key, path, reason)
    temp_files: list[str] = field(default_factory=list)  # stale temporary files
    in_flight: int = 0  # temporary files of a live writer (left alone)
    manifest_stale: bool = False  # manifest.jsonl missing or not matching the entries
    repaired: bool = False

    @property
    def clean(self) -> bool:
        """True when nothing needs repair (or it has been repaired)."""
        return self.repaired or not (self.damaged or self.temp_files or self.manifest_stale)

    def format(self, root: Path) -> str:
        """A summary line, one line per damaged entry, and what was repaired."""
        total = self.ok + sum(self.failures.values()) + len(self.damaged)
        detail = ", ".join(f"{s} {n}" for s, n in sorted(self.failures.items()))
        lines = [f"verified {root}: {total} entries: ok {self.ok}, failed "
                 f"{sum(self.failures.values())}" + (f" ({detail})" if detail else "")
                 + f", damaged {len(self.damaged)}; stale temporary files "
                 f"{len(self.temp_files)} (in flight {self.in_flight}); manifest "
                 + ("stale" if self.manifest_stale else "up to date")]
        lines += [f"  damaged {key}: {path}: {reason}" for key, path, reason in self.damaged]
        if self.repaired:
            lines.append(f"repaired: removed {len(self.damaged)} damaged entries and "
                         f"{len(self.temp_files)} temporary files, rebuilt the manifest"
                         + ("; rerun `deepfakemae preprocess` with the same inputs to rebuild "
                            "the removed entries" if self.damaged else ""))
        elif not self.clean:
            lines.append(f"run `deepfakemae cache verify {root} --repair` to fix it")
        return "\n".join(lines)


def _manifest_matches(cache: FaceCache, records: list[dict]) -> bool:
    """True when ``manifest.jsonl`` holds exactly ``records``."""
    if not cache.manifest_path.exists():
        return False
    try:
        listed = [json.loads(line) for line in cache.manifest_path.read_text().splitlines()
                  if line.strip()]
    except (OSError, ValueError):
        return False
    return sorted(listed, key=lambda r: str(r.get("key"))) == records


def verify_cache(root: str | Path, repair: bool = False, decode: bool = True) -> VerifyReport:
    """Check every entry, failure record and temporary file under ``root``; with ``repair``
    remove what is damaged or stale and rebuild the manifest."""
    cache = FaceCache(root)
    report = VerifyReport()
    failures: Counter = Counter()
    records = []
    for key in cache.keys():
        try:
            if cache.has_entry(key):
                _, record = cache.check(key, decode=decode)
                report.ok += 1
            else:
                record = cache.read_failure(key)
                failures[record.get("status", "error")] += 1
            records.append(record)
        except DamagedEntryError as exc:
            report.damaged.append((key, str(exc.path), exc.reason))
            records.append(cache.record(key))
    report.failures = dict(sorted(failures.items()))
    for path in cache.temp_files():
        if is_stale_tmp(path):
            report.temp_files.append(str(path))
        else:
            report.in_flight += 1
    report.manifest_stale = not _manifest_matches(cache, records)
    if repair:
        for key, _, _ in report.damaged:
            cache.remove(key)
        cache.sweep_temp_files()
        cache.rebuild_manifest()
        report.repaired = True
    return report
