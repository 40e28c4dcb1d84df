"""No file the repository holds (or is about to: untracked files git does not ignore) names a path of a
development machine: a home directory (``/home/<user>/``, ``/Users/<user>/``, ``/root/``) or the
working copy (``/work/<checkout>``). Results, docs and fixtures use paths relative to the repository root;
system paths (``/usr/share/...``, ``/dev/...``, ``/proc/...``, ``/tmp/...`` in an example command) are
fine. Pictures are checked by eye (``docs/explore.png``); every other file, text or binary (a pickled
checkpoint holds its paths as plain strings), is read here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PICTURES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
# the start of an absolute path (not a segment of a longer path or URL), then a home directory with a
# user name, root's home, or the working copy; "[k]" keeps this file from matching its own pattern
MACHINE_PATH = re.compile(rb"(?<![\w.~/-])/(?:home/[\w.-]+/|Users/[\w.-]+/|root/|wor[k]/)[\w.-]")


def machine_paths(data: bytes) -> list[str]:
    """The development-machine paths in ``data`` (each up to the end of its path)."""
    out = []
    for m in MACHINE_PATH.finditer(data):
        end = re.match(rb"[^\s\"'`<>()\[\]{},;:\x00-\x1f\x7f-\xff]*", data[m.start() :])
        out.append(end.group().decode("utf-8", "replace"))
    return out


def repository_files() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of committed files")
    out = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({f for f in out.decode().split("\0") if f})


def test_the_check_finds_machine_paths_and_passes_system_paths():
    # written in pieces, so that this file does not hold what it looks for
    bad = ["/" + "work/main/results/x", "/" + "home/alice/runs/demo", "/" + "Users/bob/a b.md", "/" + "root/.cache/x"]
    text = f'"run": "{bad[0]}",\n  dir: {bad[1]}\nsee {bad[2]} or ({bad[3]})\n'.encode()
    assert machine_paths(text) == [bad[0], bad[1], "/" + "Users/bob/a", bad[3]]
    fine = (
        b"/usr/share/datasets/fashion-mnist /dev/shm /proc/cpuinfo --out /tmp/q.json results/quality.json "
        b"https://github.com/home/work/ tests/fixtures/v0_1/run runs/demo ~/work/x a/root/b"
    )
    assert machine_paths(fine) == []


def test_no_committed_file_names_a_development_machine_path():
    bad = []
    for name in repository_files():
        path = ROOT / name
        if path.suffix.lower() in PICTURES or not path.is_file():
            continue
        for found in machine_paths(path.read_bytes()):
            bad.append(f"{name}: {found}")
    assert bad == [], "absolute paths of a development machine (use paths relative to the repository root):\n" + (
        "\n".join(bad)
    )
