"""Ablations of LSVCR fine-tuning on the embedded world: named variants x seeds, test metrics.

    python experiments/ablate_finetune.py --task rec                       # every variant, 3 seeds
    python experiments/ablate_finetune.py --task rec --variants base no_ids --seeds 0
    python experiments/ablate_finetune.py --task comm_rank --extra finetune.batch_size=128

Each run is a real `lsvcr stage=finetune` (a subprocess; outputs under outputs/experiments/ablate/,
sharing the prepared world and text tables of compare_finetune.py). Prints a Markdown table of the
test split (mean ± std over seeds) and the best validation epoch, and writes every run's numbers to
outputs/experiments/ablate/<task>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_finetune import OUT as COMPARE_OUT  # noqa: E402
from compare_finetune import run_one  # noqa: E402

OUT = COMPARE_OUT.parent / "ablate"

VARIANTS = {
    "base": ["model/sr=lsvcr"],
    "sasrec": ["model/sr=sasrec"],
    "no_ids": ["experiment=lsvcr_no_ids"],
    "no_text": ["experiment=lsvcr_no_text"],
    "no_comments": ["experiment=lsvcr_no_comments"],
    "no_id_text_loss": ["model/sr=lsvcr", "finetune.id_text_loss_weight=0"],
    "dropout_0.2": ["model/sr=lsvcr", "model.sr.dropout=0.2", "model.sr.attn_dropout=0.2"],
    "dropout_0.3": ["model/sr=lsvcr", "model.sr.dropout=0.3", "model.sr.attn_dropout=0.3"],
    "weight_decay_1e-3": ["model/sr=lsvcr", "optim.weight_decay=1e-3"],
    "lr_3e-3": ["model/sr=lsvcr", "optim.lr=3e-3"],
    "lr_3e-4": ["model/sr=lsvcr", "optim.lr=3e-4"],
    "temperature_0.2": ["model/sr=lsvcr", "model.sr.temperature=0.2"],
    "temperature_0.5": ["model/sr=lsvcr", "model.sr.temperature=0.5"],
    "temperature_0.2_dropout_0.2": ["model/sr=lsvcr", "model.sr.temperature=0.2", "model.sr.dropout=0.2",
                                    "model.sr.attn_dropout=0.2"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["rec", "comm_rank"], default="rec")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    args = ap.parse_args()
    results: dict[str, list] = {}
    for name in args.variants:
        for seed in args.seeds:
            t0 = time.perf_counter()
            run = run_one(["stage=finetune", f"task={args.task}", f"seed={seed}", *VARIANTS[name], *args.extra],
                          OUT / f"seed{seed}", with_run=True)
            results.setdefault(name, []).append(run)
            print(f"{args.task} {name:18s} seed {seed}: test full ndcg@10 {run['test']['full']['ndcg@10']:.4f}, "
                  f"best epoch {run['best_epoch']} ({time.perf_counter() - t0:.0f}s)", flush=True)
    lines = ["| variant | full NDCG@10 | full Recall@10 | sampled NDCG@10 | best epoch |", "|---|---|---|---|---|"]
    for name, runs in results.items():
        cells = []
        for protocol, metric in (("full", "ndcg@10"), ("full", "recall@10"), ("sampled", "ndcg@10")):
            vals = [r["test"][protocol][metric] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.4f} ± {sd:.4f}")
        epochs = ", ".join(str(r["best_epoch"]) for r in runs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {epochs} |")
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.task}.json").write_text(json.dumps({"seeds": args.seeds, "extra": args.extra, "runs": results,
                                                       "table": table}, indent=2))


if __name__ == "__main__":
    main()
