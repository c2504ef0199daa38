"""Reliability of the face cache and the preprocess command on damaged caches, reruns and
awkward inputs, with real clips (the bundled GRID clips, copied, re-encoded or broken)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from face_assets import GRID

from deepfakemae.commands.preprocess import add_preprocess_arguments, run_preprocess_command
from deepfakemae.faces.cache import DAMAGED, DamagedEntryError, FaceCache

FAST = ["--frames", "2", "--size", "64", "--no-progress"]


def preprocess(*argv: str) -> int:
    """``deepfakemae preprocess ARGV`` in this process; returns the exit code."""
    parser = add_preprocess_arguments(argparse.ArgumentParser())
    return run_preprocess_command(parser.parse_args([str(a) for a in argv]))


def flip_byte_in_member(npz: Path, member: str, back: int = 5) -> None:
    """Flip one byte of ``member``'s data inside the ``.npz`` zip (``back`` bytes from its end)."""
    with zipfile.ZipFile(npz) as zf:
        info = zf.getinfo(member)
    data = bytearray(npz.read_bytes())
    header = info.header_offset
    name_len = int.from_bytes(data[header + 26:header + 28], "little")
    extra_len = int.from_bytes(data[header + 28:header + 30], "little")
    pos = header + 30 + name_len + extra_len + info.file_size - back
    data[pos] ^= 0x01
    npz.write_bytes(bytes(data))


def stamps(cache: FaceCache) -> dict[str, tuple[int, int]]:
    """key -> (inode, mtime_ns) of every finished entry."""
    out = {}
    for key in cache.keys():
        st = cache.entry_path(key).stat()
        out[key] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def grid10(tmp_path_factory) -> Path:
    """The ten bundled GRID clips in one input folder."""
    folder = tmp_path_factory.mktemp("grid10")
    for clip in sorted(GRID.glob("*.mpg")):
        shutil.copy(clip, folder / clip.name)
    assert len(list(folder.iterdir())) == 10
    return folder


# -- 1. a damaged entry -------------------------------------------------------------------------

def test_bit_flipped_entry_costs_exactly_its_own_rebuild(grid10, tmp_path, capsys):
    out = tmp_path / "cache"
    assert preprocess("--input", grid10, "--output", out, *FAST) == 0
    cache = FaceCache(out)
    before = stamps(cache)
    assert len(before) == 10
    victim = "lbax4n"
    flip_byte_in_member(cache.entry_path(victim), "meta.npy")
    with pytest.raises(DamagedEntryError, match=victim) as err:
        cache.read(victim)
    assert str(cache.entry_path(victim)) in str(err.value) and "CRC" in str(err.value)
    cache.manifest_path.unlink()
    cache.rebuild_manifest()  # crashed with BadZipFile before
    records = {r["key"]: r for r in cache.manifest()}
    assert records[victim]["status"] == DAMAGED and victim in records[victim]["error"]
    assert sum(r["status"] == "ok" for r in records.values()) == 9
    capsys.readouterr()

    assert preprocess("--input", grid10, "--output", out, *FAST) == 0
    printed = capsys.readouterr().out
    assert "damaged 1 (rebuilt)" in printed and "processed 1," in printed and victim in printed
    after = stamps(cache)
    assert after[victim] != before[victim]
    assert {k: v for k, v in after.items() if k != victim} == \
        {k: v for k, v in before.items() if k != victim}  # nothing else was rewritten
    assert len(cache.read(victim)) == 2
    assert {r["status"] for r in cache.manifest()} == {"ok"}


# -- 5. inputs that crashed ---------------------------------------------------------------------

def test_two_files_with_one_key_is_a_usage_error_naming_both(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "clip.mpg")
    shutil.copy(GRID / "lbax4n.mpg", inputs / "clip.avi")
    assert preprocess("--input", inputs, "--output", tmp_path / "cache", *FAST) == 2
    err = capsys.readouterr().err
    assert "'clip'" in err and "clip.mpg" in err and "clip.avi" in err


def test_list_with_parent_paths_is_processed(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", tmp_path / "videos" / "a.mpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "inputs.txt"
    listing.write_text("../videos/a.mpg\n../videos/missing.mp4\n")
    out = tmp_path / "cache"
    assert preprocess("--input", listing, "--output", out, *FAST) == 1  # one input is missing
    manifest = {r["key"]: r for r in FaceCache(out).manifest()}
    base = (tmp_path / "videos").absolute().as_posix().lstrip("/")
    assert manifest[f"{base}/a"]["status"] == "ok"
    assert manifest[f"{base}/missing"]["status"] == "unreadable"
    assert "no such file" in manifest[f"{base}/missing"]["error"]


def test_predict_accepts_a_list_with_parent_paths(tmp_path, capsys):
    from deepfakemae.cli import main

    (tmp_path / "videos").mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", tmp_path / "videos" / "a.mpg")
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "inputs.txt"
    listing.write_text("../videos/a.mpg\n")
    code = main(["predict", "--video", str(listing), "--output", str(tmp_path / "out"),
                 "--finetune-ckpt", str(tmp_path / "none.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "none.ckpt does not exist" in err  # the list itself was accepted


# -- 6. inputs that vanished --------------------------------------------------------------------

def test_dangling_links_and_link_loops_are_recorded(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "good.mpg")
    (inputs / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (inputs / "loop_a.mp4").symlink_to(inputs / "loop_b.mp4")
    (inputs / "loop_b.mp4").symlink_to(inputs / "loop_a.mp4")
    out = tmp_path / "cache"
    assert preprocess("--input", inputs, "--output", out, *FAST) == 1
    printed = capsys.readouterr().out
    assert "inputs 4: ok 1, failed 3 (unreadable 3)" in printed
    manifest = {r["key"]: r for r in FaceCache(out).manifest()}
    assert set(manifest) == {"good", "dangling", "loop_a", "loop_b"}
    assert "dangling symbolic link" in manifest["dangling"]["error"]
    assert "gone.mp4" in manifest["dangling"]["error"]
    assert "symbolic link loop" in manifest["loop_a"]["error"]


# -- 7. reruns that say the truth ---------------------------------------------------------------

def test_rerun_reports_recorded_failures_and_retries_them(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "good.mpg")
    (inputs / "zero.mp4").write_bytes(b"")
    out = tmp_path / "cache"
    assert preprocess("--input", inputs, "--output", out, *FAST) == 1
    capsys.readouterr()
    assert preprocess("--input", inputs, "--output", out, *FAST) == 1  # exited 0 before
    printed = capsys.readouterr().out
    assert "inputs 2: ok 1, failed 1 (empty 1)" in printed and "already done 2" in printed
    assert "--retry-failed" in printed
    assert preprocess("--input", inputs, "--output", out, *FAST, "--retry-failed") == 1
    assert "retried 1" in capsys.readouterr().out
    shutil.copy(GRID / "lbax4n.mpg", inputs / "zero.mp4")  # the input was fixed: retried
    assert preprocess("--input", inputs, "--output", out, *FAST) == 0
    assert "retried 1" in capsys.readouterr().out
    assert {r["status"] for r in FaceCache(out).manifest()} == {"ok"}


def test_transient_failures_are_retried_by_default(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "clip.mpg")
    cache = FaceCache(tmp_path / "cache")
    cache.write_failure("clip", "error", "MemoryError: a worker ran out of memory",
                        {"path": str(inputs / "clip.mpg")})  # what a crashed worker records
    assert preprocess("--input", inputs, "--output", cache.root, *FAST) == 0
    assert "retried 1" in capsys.readouterr().out
    assert cache.record("clip")["status"] == "ok"


def _one_clip_cache(tmp_path: Path) -> tuple[Path, Path]:
    """An input folder holding one GRID clip (``a.mpg``) and its face cache, made with FAST."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "a.mpg")
    out = tmp_path / "cache"
    assert preprocess("--input", inputs, "--output", out, *FAST) == 0
    return inputs, out


def _set_settings(cache: FaceCache, text: str | None) -> None:
    """Replace ``cache.json`` by ``text`` (``None``: remove it)."""
    if text is None:
        cache.settings_path.unlink()
    else:
        cache.settings_path.write_text(text)


def test_other_settings_are_refused_unless_allowed(tmp_path, capsys):
    inputs, out = _one_clip_cache(tmp_path)
    assert json.loads((out / "cache.json").read_text())["settings"]["size"] == 64
    shutil.copy(GRID / "lbax4n.mpg", inputs / "b.mpg")
    capsys.readouterr()
    assert preprocess("--input", inputs, "--output", out, "--frames", "3", "--size", "96",
                      "--no-progress") == 2
    err = capsys.readouterr().err
    assert "size 64 (cache) vs 96 (this run)" in err and "frames 2 (cache) vs 3" in err
    assert not FaceCache(out).has_entry("b")
    assert preprocess("--input", inputs, "--output", out, "--frames", "3", "--size", "96",
                      "--no-progress", "--allow-mixed-settings") == 0
    assert FaceCache(out).read("b").crops.shape[1:] == (96, 96, 3)


# -- 8. leftovers and permissions ---------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def test_temp_file_of_a_killed_write_is_swept(tmp_path, capsys):
    cache = FaceCache(tmp_path / "cache")
    code = ("import os, sys; from pathlib import Path; from deepfakemae.faces import files; "
            "files.atomic_write(Path(sys.argv[1]), "
            "lambda h: (h.write(b'half an entry'), os.kill(os.getpid(), 9)))")
    target = cache.entries_dir / "clip.npz"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=ENV, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    leftovers = cache.temp_files()
    assert len(leftovers) == 1 and not target.exists()
    old_style = cache.entries_dir / ".tmp-k3j4h5.npz"  # mkstemp name of older versions, a day old
    old_style.write_bytes(b"x")
    os.utime(old_style, (time.time() - 2 * 86400,) * 2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "clip.mpg")
    assert preprocess("--input", inputs, "--output", cache.root, *FAST) == 0
    assert "removed 2 stale temporary file(s)" in capsys.readouterr().out
    assert cache.temp_files() == [] and cache.has_entry("clip")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_files_follow_the_umask(tmp_path, umask):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "clip.mpg")
    (inputs / "zero.mp4").write_bytes(b"")
    out = tmp_path / "cache"
    previous = os.umask(umask)
    try:
        preprocess("--input", inputs, "--output", out, *FAST)
    finally:
        os.umask(previous)
    cache = FaceCache(out)
    for path in (cache.entry_path("clip"), cache.failure_path("zero"), cache.manifest_path,
                 cache.settings_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path  # was 0600


def _children(pid: int) -> list[int]:
    """Pool worker processes of ``pid`` (its resource tracker excluded)."""
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                found.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_exit_with_their_killed_parent(grid10, tmp_path):
    out = tmp_path / "cache"
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepfakemae.cli", "preprocess", "--input", str(grid10),
             "--output", str(out), "--frames", "16", "--size", "64", "--workers", "2",
             "--no-progress"], env=ENV, cwd=REPO, stderr=stderr, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) == 2 and FaceCache(out).keys():
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) == 2, "the run ended before the kill"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60  # a bound on the wait, not a speed requirement
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        survivors = [w for w in workers if _alive(w)]
        for w in survivors:
            os.kill(w, signal.SIGKILL)
    assert survivors == []
    assert "Traceback" not in log.read_text() and "BrokenPipeError" not in log.read_text()


# -- 9. smaller ---------------------------------------------------------------------------------

def test_truncated_faststart_file_is_stored_with_a_warning(tmp_path, capsys):
    import av
    from face_assets import grid_frames

    frames = grid_frames(GRID / "bbaf2n.mpg")  # 75 frames
    full = tmp_path / "full.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    inputs = tmp_path / "in"
    inputs.mkdir()
    data = full.read_bytes()  # the index (moov) is at the front and announces 75 frames
    (inputs / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "cache"
    assert preprocess("--input", inputs, "--output", out, "--frames", "32", "--size", "64",
                      "--no-progress") == 0
    printed = capsys.readouterr().out
    record = FaceCache(out).record("cut")
    assert record["status"] == "ok" and record["num_frames_total"] == 75
    decoded = record["frames_sampled"]
    assert 1 <= decoded < 32
    assert f"only {decoded} of 32 sampled frames decoded" in record["warning"]
    assert "warnings 1" in printed and f"cut: only {decoded} of 32" in printed


# -- cache verify -------------------------------------------------------------------------------

def test_cache_verify_finds_and_repairs_damage(tmp_path, capsys):
    from deepfakemae.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("bbaf2n", "lbax4n", "swiz3n"):
        shutil.copy(GRID / f"{name}.mpg", inputs / f"{name}.mpg")
    (inputs / "zero.mp4").write_bytes(b"")
    out = tmp_path / "cache"
    assert preprocess("--input", inputs, "--output", out, *FAST) == 1
    cache = FaceCache(out)
    assert main(["cache", "verify", str(out)]) == 0
    assert "4 entries: ok 3, failed 1 (empty 1), damaged 0" in capsys.readouterr().out
    flip_byte_in_member(cache.entry_path("swiz3n"), "jpeg.npy", back=100)  # manifest: still ok
    stale = cache.entries_dir / ".tmp-otherhost-1-abc.npz"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    assert main(["cache", "verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "damaged 1" in printed and "stale temporary files 1" in printed
    assert f"damaged swiz3n: {cache.entry_path('swiz3n')}" in printed and "CRC" in printed
    assert main(["cache", "verify", str(out), "--repair"]) == 0
    assert "repaired: removed 1 damaged entries and 1 temporary files" in capsys.readouterr().out
    assert not cache.has_entry("swiz3n") and not stale.exists()
    assert main(["cache", "verify", str(out)]) == 0
    assert preprocess("--input", inputs, "--output", out, *FAST) == 1  # zero.mp4 still fails
    assert "processed 1, already done 3" in capsys.readouterr().out
    assert main(["cache", "verify", str(inputs)]) == 2
    assert "is not a face cache" in capsys.readouterr().err


def test_predict_names_a_folder_given_as_a_checkpoint(tmp_path, capsys):
    from deepfakemae.cli import main

    run = tmp_path / "runs" / "finetune"
    run.mkdir(parents=True)
    code = main(["predict", "--video", str(GRID / "bbaf2n.mpg"), "--output",
                 str(tmp_path / "out"), "--finetune-ckpt", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and f"{run} is a folder, not a checkpoint file" in err  # "does not exist"


def test_cache_json_missing_or_unknown_over_entries_is_refused(tmp_path, capsys):
    inputs, out = _one_clip_cache(tmp_path)
    cache = FaceCache(out)
    shutil.copy(GRID / "lbax4n.mpg", inputs / "b.mpg")
    other = ["--frames", "3", "--size", "96", "--no-progress"]
    for text, says in ((None, "is missing"), ("[1, 2]\n", "does not hold a settings record"),
                       ('{"made_by": "someone"}\n', "does not hold a settings record")):
        _set_settings(cache, text)
        capsys.readouterr()
        assert preprocess("--input", inputs, "--output", out, *other) == 2
        err = capsys.readouterr().err
        assert f"{cache.settings_path} {says}" in err and "--allow-mixed-settings" in err
        assert not cache.has_entry("b")  # nothing written, a's settings not relabelled
        assert (cache.settings_path.read_text() if text else None) == text
    cache.settings_path.unlink()
    assert preprocess("--input", inputs, "--output", out, *other, "--allow-mixed-settings") == 0
    record = json.loads(cache.settings_path.read_text())
    assert record["unrecorded"] is True and record["settings"]["size"] == 96
    from deepfakemae.cli import main

    capsys.readouterr()
    assert main(["cache", "verify", str(out)]) == 0  # a accepted as made before the record
    assert "1 entries match no recorded setting: a (size 64" in capsys.readouterr().out


def test_cache_verify_checks_cache_json_against_the_entries(tmp_path, capsys):
    from deepfakemae.cli import main

    inputs, out = _one_clip_cache(tmp_path)
    cache = FaceCache(out)
    good = cache.settings_path.read_text()
    capsys.readouterr()
    assert main(["cache", "verify", str(out)]) == 0
    assert "cache.json ok" in capsys.readouterr().out
    wrong = json.loads(good)
    wrong["settings"]["size"] = 112  # entries made at 64 px labelled 112
    for text, says in (("garbage {", "is unreadable"), (None, "is missing"),
                       ('"just a string"\n', "holds no settings record"),
                       (json.dumps(wrong), "1 entries match no recorded setting: a (size 64")):
        _set_settings(cache, text)
        assert main(["cache", "verify", str(out)]) == 1
        printed = capsys.readouterr().out
        assert "cache.json wrong" in printed and says in printed, printed
        assert main(["cache", "verify", str(out), "--repair"]) == 1  # not repaired
        assert "cache.json is not repaired" in capsys.readouterr().out
    cache.settings_path.write_text(good)
    assert main(["cache", "verify", str(out)]) == 0


def test_preprocess_in_place_never_takes_its_cache_as_input(tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(GRID / "bbaf2n.mpg", inputs / "clip.mpg")
    monkeypatch.chdir(inputs)
    assert preprocess("--input", ".", "--output", "cache", *FAST) == 0
    assert preprocess("--input", ".", "--output", "cache", *FAST) == 0  # was: entries/ "empty"
    assert [r["key"] for r in FaceCache("cache").manifest()] == ["clip"]
    capsys.readouterr()
    # another cache inside the input folder is listed as skipped, not preprocessed
    assert preprocess("--input", ".", "--output", tmp_path / "other", *FAST) == 0
    assert "cache (a face cache (`deepfakemae preprocess --output`), not an input)" in \
        capsys.readouterr().err
    assert [r["key"] for r in FaceCache(tmp_path / "other").manifest()] == ["clip"]
