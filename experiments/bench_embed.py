"""Embedding throughput at real size: stage=embed's text-table builder against one item per forward.

    lsvcr-assets fetch minilm-l6-v2 && lsvcr-assets fetch smollm2-135m && lsvcr-assets fetch ml-1m
    python experiments/bench_embed.py                              # both models, both text sets
    python experiments/bench_embed.py --models minilm --sources ml1m --loop-items 300 --threads 2

For each model (the directories ``lsvcr-assets`` made, loaded with the project's builders:
``PretrainedEncoder`` for MiniLM, ``PretrainedCausalLM`` for SmolLM2, ``--dtype``) and each text set it
prints items/s of

- **batched**: :func:`lsvcr.models.llm.table_encoder.encode_table`, the path ``stage=embed`` takes (length-sorted
  batches of ``--batch-size``, padding to the batch's longest, inference mode, rows written to a
  memory-mapped ``.npy``), on every text of the set (or the first ``--limit``);
- **loop**: the official code's way, one text per forward under ``torch.no_grad()`` with the same
  encoder, tokenizer, ``max_length`` and thread count, timed on the first ``--loop-items`` texts only
  (a full loop over 30k comments would take an hour for SmolLM2 on a 2-core CPU);

and the process's peak RSS. Text sets: ``ml1m``: MovieLens-1M's movies, text = ``movie_title + " " + genre``
read straight from ``ml-1m.item``; ``synthetic``: the default embedded world's video titles and
comments, prepared through the project's API (``lsvcr.pipelines.common.load_dataset``). Each model
runs in its own subprocess so each peak RSS is that model's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"minilm": ("minilm-l6-v2", "lsvcr.models.llm.loader.PretrainedEncoder"),
          "smollm2": ("smollm2-135m", "lsvcr.models.llm.loader.PretrainedCausalLM")}


def output_dir() -> Path:
    from lsvcr.assets import default_output_dir

    return default_output_dir()


def assets_dir() -> Path:
    from lsvcr.assets import default_assets_dir

    return default_assets_dir()


def ml1m_texts(path: Path) -> list[str]:
    """``movie_title + " " + genre`` of every row of a RecBole ``ml-1m.item`` (tab-separated, typed header)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        title, genre = header.index("movie_title"), header.index("genre")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [f"{r[title]} {r[genre]}".strip() for r in rows]


def synthetic_texts(data_dir: Path) -> dict[str, list[str]]:
    """Titles and comments of the default synthetic world, prepared (or reused) under ``data_dir``."""
    from hydra import compose, initialize_config_dir

    from lsvcr.pipelines.common import load_dataset
    from lsvcr.utils.resolvers import register

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["stage=embed", f"paths.data_dir={data_dir}"])
    ds = load_dataset(cfg)
    return {"synthetic titles": ds.video_titles().to_pylist(), "synthetic comments": ds.comment_texts().to_pylist()}


def build_encoder(model: str, path: Path, dtype: str = "float32"):
    """(text encoder, tokenizer) through the project's builders (``model.llm.dtype``), ``llm_emb_mlp`` seeded."""
    import torch
    from hydra.utils import get_class

    from lsvcr.models.llm.text_encoder import LLMTextEncoder

    bundle = get_class(MODELS[model][1])(str(path), dtype=dtype, name=model).build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = LLMTextEncoder(bundle.model, out_dim=256).to(bundle.model.dtype).eval()
    return encoder, bundle.tokenizer


def time_batched(encoder, tokenizer, texts, args, tmp: Path) -> float:
    from lsvcr.models.llm.table_encoder import encode_table

    t0 = time.perf_counter()
    encode_table(encoder, tokenizer, texts, tmp / "table.npy", batch_size=args.batch_size,
                 max_length=args.max_length, progress=False)
    return len(texts) / (time.perf_counter() - t0)


def time_loop(encoder, tokenizer, texts, args) -> float:
    """One text per forward, no padding, ``torch.no_grad()`` (the official extraction loop)."""
    import torch

    from lsvcr.data.tokens import encode_texts

    t0 = time.perf_counter()
    with torch.no_grad():
        for text in texts:
            encoder(**encode_texts(tokenizer, [text], args.max_length))
    return len(texts) / (time.perf_counter() - t0)


def bench_model(model: str, args) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    path = Path(args.assets_dir) / MODELS[model][0]
    if not (path / "config.json").is_file():
        print(f"{model}: skipped, no model directory at {path} (lsvcr-assets fetch {MODELS[model][0]})", flush=True)
        return []
    sets = {}
    if "ml1m" in args.sources:
        item = Path(args.assets_dir) / "ml-1m" / "ml-1m.item"
        if item.is_file():
            sets["ml-1m titles+genre"] = ml1m_texts(item)
        else:
            print(f"ml1m: skipped, no {item} (lsvcr-assets fetch ml-1m)", flush=True)
    if "synthetic" in args.sources:
        sets.update(synthetic_texts(Path(args.data_dir)))
    encoder, tokenizer = build_encoder(model, path, args.dtype)
    rows = []
    for name, texts in sets.items():
        texts = texts[: args.limit] if args.limit else texts
        with tempfile.TemporaryDirectory() as tmp:
            batched = time_batched(encoder, tokenizer, texts, args, Path(tmp))
        loop = time_loop(encoder, tokenizer, texts[: args.loop_items], args)
        tokens = [len(t) for t in tokenizer(texts[:2000], truncation=True, max_length=args.max_length)["input_ids"]]
        row = {"model": model, "dtype": args.dtype, "threads": args.threads, "texts": name, "items": len(texts), "mean_tokens": round(sum(tokens) / len(tokens), 1),
               "batched_items_per_s": round(batched, 1), "loop_items": min(len(texts), args.loop_items),
               "loop_items_per_s": round(loop, 1), "speedup": round(batched / loop, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sources", nargs="+", default=["ml1m", "synthetic"], choices=["ml1m", "synthetic"])
    ap.add_argument("--assets-dir", default=None, help="default $LSVCR_ASSETS_DIR (or $LSVCR_OUTPUT_DIR/assets)")
    ap.add_argument("--data-dir", default=None, help="prepared datasets (default $LSVCR_OUTPUT_DIR/data)")
    ap.add_argument("--batch-size", type=int, default=64, help="embed.batch_size (the stage's default)")
    ap.add_argument("--max-length", type=int, default=64, help="embed.max_length (the stage's default)")
    ap.add_argument("--loop-items", type=int, default=300, help="texts timed one per forward")
    ap.add_argument("--limit", type=int, default=None, help="batched: only the first N texts of each set")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads for both paths (on a shared machine 1 avoids OpenMP spin-wait stalls)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="model.llm.dtype for both paths (bfloat16 pays off on CPUs with AMX / AVX512-BF16)")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.assets_dir = args.assets_dir or str(assets_dir())
    args.data_dir = args.data_dir or str(output_dir() / "data")
    if args.in_process or len(args.models) == 1:
        for model in args.models:
            bench_model(model, args)
        return 0
    for model in args.models:  # one subprocess per model: its peak RSS is its own
        argv_one = [a for a in (argv if argv is not None else sys.argv[1:])]
        cmd = [sys.executable, __file__, *argv_one, "--models", model, "--in-process"]
        if subprocess.run(cmd, check=False).returncode:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
