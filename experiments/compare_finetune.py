"""Compare baselines and LSVCR fine-tuning on the embedded world, mean over seeds (full ranking).

    python experiments/compare_finetune.py                      # 3 seeds, the default world
    python experiments/compare_finetune.py --world off          # the same with every mechanism off
    python experiments/compare_finetune.py --seeds 0 1 2 --extra finetune.epochs=30   # extra: fine-tuning runs
    python experiments/compare_finetune.py --only "lsvcr (un-aligned)" --tag smollm2 \
        --extra model/llm=smollm2_135m model.llm.dtype=bfloat16 embed.mlp_seed=0   # SmolLM2's text tables

Each row is a real `lsvcr` run (a subprocess, outputs under outputs/experiments/compare/<world or --tag>/);
the seed changes model initialisation, batch order and negatives, not the world. Prints one
Markdown table of test-split metrics (mean ± std over seeds): full and sampled ranking, and full
ranking on the cold and warm targets; writes it, with every run's numbers, to
outputs/experiments/compare/<world or --tag>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "experiments" / "compare"

# (label, task, args); every run also gets seed=<s> and the --extra overrides
RUNS = [
    ("popularity", "rec", ["stage=evaluate", "model/sr=popularity"]),
    ("random", "rec", ["stage=evaluate", "model/sr=random"]),
    ("sasrec", "rec", ["stage=finetune", "model/sr=sasrec"]),
    ("lsvcr (un-aligned)", "rec", ["stage=finetune", "model/sr=lsvcr"]),
    ("lsvcr, no comment history", "rec", ["stage=finetune", "experiment=lsvcr_no_comments"]),
    ("random", "comm_rank", ["stage=evaluate", "model/sr=random"]),
    ("most_liked", "comm_rank", ["stage=evaluate", "model/sr=most_liked"]),
    ("popularity", "comm_rank", ["stage=evaluate", "model/sr=popularity"]),
    ("lsvcr (un-aligned)", "comm_rank", ["stage=finetune", "model/sr=lsvcr", "finetune.batch_size=128"]),
]
METRICS = ("ndcg@10", "recall@10", "mrr@10")


WORLDS = {"on": [], "off": ["data.mechanisms=false"]}  # the default world, and every mechanism off
PROTOCOLS = ("full", "full/cold", "full/warm", "sampled")


def run_one(args: list[str], out: Path, with_run: bool = False, data_dir: Path = OUT / "data",
            run: Path | None = None) -> dict:
    """The test results of one `lsvcr` run; with ``with_run`` also its best epoch and train time.
    ``run``: its run directory (default: a new one under ``out/runs``)."""
    env = {**os.environ, "LSVCR_OUTPUT_DIR": str(out), "LSVCR_DATA_DIR": str(data_dir)}
    if run is None:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        run = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S_"), dir=out / "runs"))  # safe beside others
    run.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "lsvcr.main", *args, "hydra/job_logging=disabled", f"hydra.run.dir={run}"],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((run / "metrics.json").read_text())
    if not with_run:
        return metrics["results"]["test"]
    return {"test": metrics["results"]["test"], "best_epoch": metrics.get("best_epoch"),
            "train_seconds": metrics.get("train_seconds"), "run_dir": str(run)}


def mean_sd_cells(tests: list[dict], protocol: str, metrics=METRICS) -> list[str]:
    """``"mean ± sd"`` over the runs' test results of ``protocol``, one cell per metric (sd 0 for one run)."""
    cells = []
    for m in metrics:
        vals = [t[protocol][m] for t in tests]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        cells.append(f"{statistics.mean(vals):.4f} ± {sd:.4f}")
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every fine-tuning run")
    ap.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    ap.add_argument("--world", choices=sorted(WORLDS), default="on", help="mechanisms on (default) or off")
    ap.add_argument("--tag", default=None, help="results under outputs/experiments/compare/<tag>/ (default: the world)")
    args = ap.parse_args()
    out = OUT / (args.tag or args.world)
    results: dict[str, list] = {}
    for label, task, run_args in RUNS:
        if args.only and label not in args.only:
            continue
        for seed in args.seeds:
            t0 = time.perf_counter()
            extra = args.extra if "stage=finetune" in run_args else []
            test = run_one([f"task={task}", f"seed={seed}", *run_args, *WORLDS[args.world], *extra],
                           out / f"seed{seed}", data_dir=OUT / "data")
            results.setdefault(f"{task} | {label}", []).append(test)
            print(f"{task:9s} {label:20s} seed {seed}: full ndcg@10 {test['full']['ndcg@10']:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    lines = ["| task | model | protocol | " + " | ".join(METRICS) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for key, runs in results.items():
        task, label = key.split(" | ")
        for protocol in PROTOCOLS:
            if not all(protocol in r for r in runs):
                continue
            cells = mean_sd_cells(runs, protocol)
            lines.append(f"| {task} | {label} | {protocol} (n={int(runs[0][protocol]['count'])}) | "
                         + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"seeds": args.seeds, "extra": args.extra, "world": args.world,
                                                  "only": args.only,
                                                  "runs": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
