"""``deepfakemae cache verify DIR [--repair]``: check every entry of a face cache.

Each ``.npz`` entry is read in full (zip CRCs), its arrays are checked against the layout and
every JPEG is decoded; each ``.fail.json`` must parse; temporary files and the manifest are
checked too, and so is ``cache.json`` against the entries (each finished entry's crop size,
landmark backend and frame count must match a recorded setting). ``--repair`` removes damaged
entries (the next ``preprocess`` run rebuilds them), sweeps stale temporary files and rewrites
the manifest; it does not touch ``cache.json``, whose problems stay reported.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deepfakemae.faces.cache import CacheError, DamagedEntryError, FaceCache
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
    settings: list[str] = field(default_factory=list)  # what is wrong with cache.json
    settings_notes: list[str] = field(default_factory=list)  # accepted (unrecorded) mixes
    repaired: bool = False

    @property
    def clean(self) -> bool:
        """True when nothing needs repair (or it has been repaired) and ``cache.json``
        describes the entries."""
        fixed = self.repaired or not (self.damaged or self.temp_files or self.manifest_stale)
        return fixed and not self.settings

    def format(self, root: Path) -> str:
        """A summary line, one line per damaged entry, and what was repaired."""
        total = self.ok + sum(self.failures.values()) + len(self.damaged)
        detail = ", ".join(f"{s} {n}" for s, n in sorted(self.failures.items()))
        lines = [f"verified {root}: {total} entries: ok {self.ok}, failed "
                 f"{sum(self.failures.values())}" + (f" ({detail})" if detail else "")
                 + f", damaged {len(self.damaged)}; stale temporary files "
                 f"{len(self.temp_files)} (in flight {self.in_flight}); manifest "
                 + ("stale" if self.manifest_stale else "up to date")
                 + f"; cache.json {'wrong' if self.settings else 'ok'}"]
        lines += [f"  damaged {key}: {path}: {reason}" for key, path, reason in self.damaged]
        lines += [f"  cache.json: {problem}" for problem in self.settings]
        lines += [f"  note: {note}" for note in self.settings_notes]
        if self.repaired:
            lines.append(f"repaired: removed {len(self.damaged)} damaged entries and "
                         f"{len(self.temp_files)} temporary files, rebuilt the manifest"
                         + ("; rerun `deepfakemae preprocess` with the same inputs to rebuild "
                            "the removed entries" if self.damaged else ""))
        elif self.damaged or self.temp_files or self.manifest_stale:
            lines.append(f"run `deepfakemae cache verify {root} --repair` to fix it")
        if self.settings:
            lines.append(f"cache.json is not repaired: restore the {root / 'cache.json'} the "
                         "entries were made with, or rebuild them with `deepfakemae preprocess "
                         "--output` a fresh folder")
        return "\n".join(lines)


def _manifest_matches(cache: FaceCache, records: list[dict]) -> bool:
    """True when ``manifest.jsonl`` holds exactly ``records``."""
    if not cache.manifest_path.exists():
        return False
    try:
        listed = [json.loads(line) for line in cache.manifest_path.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    except (OSError, ValueError):
        return False
    return sorted(listed, key=lambda r: str(r.get("key"))) == records


def _matches(meta: dict, setting: dict) -> bool:
    """True when an entry's ``meta`` could have been made with ``setting`` (a cache.json
    settings record): same crop size and landmarks, no more frames sampled than asked for."""
    try:
        return (int(meta.get("size", -1)) == int(setting.get("size", -2))
                and meta.get("landmarks") == setting.get("landmarks")
                and int(meta.get("frames_sampled", 0)) <= int(setting.get("frames", 0)))
    except (TypeError, ValueError):
        return False


def check_settings_record(cache: FaceCache, metas: dict[str, dict]) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of ``cache.json`` against the finished entries' ``metas``
    (key -> meta): missing, not JSON, no settings record, or entries no recorded setting
    describes (notes only when the record says earlier entries have unrecorded settings)."""
    path = cache.settings_path
    try:
        recorded = cache.read_settings()
    except CacheError as exc:
        return [str(exc)], []
    if recorded is None:
        return ([f"{path} is missing; the settings of the {len(metas)} entries are unknown"]
                if metas else []), []
    mixed = recorded.get("mixed") or []
    allowed = [recorded.get("settings"), *(mixed if isinstance(mixed, list) else [None])]
    if not all(isinstance(a, dict) for a in allowed):
        return [f"{path} holds no settings record (a JSON object with \"settings\": "
                "{frames, size, landmarks, ...})"], []
    odd = sorted(k for k, meta in metas.items() if not any(_matches(meta, a) for a in allowed))
    if not odd:
        return [], []
    shown = ", ".join(f"{k} (size {metas[k].get('size')}, {metas[k].get('landmarks')}, "
                      f"{metas[k].get('frames_sampled')} frames)" for k in odd[:5])
    more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
    text = f"{len(odd)} entries match no recorded setting: {shown}{more}"
    if recorded.get("unrecorded"):
        return [], [text + " (made before the settings were recorded; accepted with "
                    "--allow-mixed-settings)"]
    return [text], []


def verify_cache(root: str | Path, repair: bool = False, decode: bool = True) -> VerifyReport:
    """Check every entry, failure record and temporary file under ``root``; with ``repair``
    remove what is damaged or stale and rebuild the manifest."""
    cache = FaceCache(root)
    report = VerifyReport()
    failures: Counter = Counter()
    records = []
    metas: dict[str, dict] = {}
    for key in cache.keys():
        try:
            if cache.has_entry(key):
                _, record = cache.check(key, decode=decode)
                report.ok += 1
                metas[key] = record
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
    report.settings, report.settings_notes = check_settings_record(cache, metas)
    if repair:
        for key, _, _ in report.damaged:
            cache.remove(key)
        cache.sweep_temp_files()
        cache.rebuild_manifest()
        report.repaired = True
    return report
