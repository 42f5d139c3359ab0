"""The effect of alignment on fine-tuning: LSVCR fine-tuned un-aligned, from a 0-step control and from
an alignment run, with text tables of the same base LLM, full ranking on test (overall, cold, warm).

    # the embedded world (rec and comm_rank), SmolLM2 tables in bfloat16:
    python experiments/align_effect.py --data world --seeds 0 1 2 \
        --aligned <align run> --control <0-step align run> \
        --extra model/llm=smollm2_135m model.llm.dtype=bfloat16
    # ml-100k (rec only: no comments), the recipe of experiments/real_data.py's LSVCR rows:
    python experiments/align_effect.py --data ml100k --aligned <run> --control <run> \
        --extra model/llm=smollm2_135m model.llm.dtype=float32

Rows (every one a real `lsvcr stage=finetune` run, one per task and seed):
- un-aligned: tables of the base LLM through a random llm_emb_mlp drawn from one fixed seed
  (`embed.mlp_seed=0`, so the seeds share one set of tables, as the other rows do), a fresh SR;
- 0-step control: `init_from=<control>`, an alignment run with `align.max_steps=0` (the
  hand-over without training: its random SR, llm_emb_mlp and, with align.standardize, statistics);
- aligned: `init_from=<aligned>`.
The seed changes the fine-tuning's initialisation (where not handed over), batch order and negatives.
Each run's directory is ``outputs/experiments/align_effect/<tag>/<row>/<task>/seed<s>/``; a run whose
directory holds a finished run of the same overrides is read, not repeated, so the script resumes.
Prints one Markdown table (mean ± sd over the seeds, per-seed NDCG@10, best epochs) and writes it, with
every run's test metrics, to ``outputs/experiments/align_effect/<tag>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_finetune import RUNS as WORLD_RUNS  # noqa: E402  (the world's fine-tuning recipe per task)
from compare_finetune import mean_sd_cells, run_one  # noqa: E402
from real_data import LSVCR as MOVIELENS_LSVCR  # noqa: E402  (LSVCR's recipe on MovieLens)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "experiments" / "align_effect"
METRICS = ("ndcg@10", "recall@10", "mrr@10")
PROTOCOLS = ("full", "full/cold", "full/warm")
ROWS = ("un-aligned", "0-step control", "aligned")


def recipe(data: str, task: str) -> list[str]:
    """The fine-tuning overrides of ``task`` on ``data`` besides task and seed (the comparison
    scripts' own LSVCR rows)."""
    if data == "world":
        [args] = [a for label, t, a in WORLD_RUNS if label == "lsvcr (un-aligned)" and t == task]
        return args
    if task != "rec":
        raise SystemExit(f"--data {data}: MovieLens has no comments, so only --tasks rec")
    return [f"data={data}", *MOVIELENS_LSVCR]


def finished(run: Path, overrides: list[str]) -> dict | None:
    """``run``'s metrics.json when it is a finished run of exactly ``overrides``."""
    try:
        done = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if done == overrides and "test" in metrics.get("results", {}) else None


def fine_tune(overrides: list[str], run: Path) -> dict:
    metrics = finished(run, overrides)
    if metrics is None:
        return run_one(overrides, run.parent, with_run=True, data_dir=OUT / "data", run=run)
    return {"test": metrics["results"]["test"], "best_epoch": metrics.get("best_epoch"),
            "train_seconds": metrics.get("train_seconds"), "run_dir": str(run)}


def table(results: dict) -> str:
    lines = ["| task | LSVCR fine-tuned | protocol | " + " | ".join(METRICS) + " | per seed NDCG@10 | best epochs |",
             "|---|---|---|" + "---|" * (len(METRICS) + 2)]
    for key, runs in results.items():
        task, row = key.split(" | ")
        if not runs:
            continue
        for protocol in PROTOCOLS:
            if not all(protocol in r["test"] for r in runs):
                continue
            cells = mean_sd_cells([r["test"] for r in runs], protocol, METRICS)
            seeds = " / ".join(f"{r['test'][protocol]['ndcg@10']:.4f}" for r in runs)
            epochs = "/".join(str(r["best_epoch"]) for r in runs) if protocol == "full" else ""
            count = int(runs[0]["test"][protocol]["count"])
            lines.append(f"| {task} | {row} | {protocol} (n={count}) | " + " | ".join(cells)
                         + f" | {seeds} | {epochs} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("world", "ml100k", "ml1m"), default="world")
    ap.add_argument("--aligned", type=Path, required=True,
                    help="an alignment run, or one of its checkpoints (<run>/align_step<N>)")
    ap.add_argument("--control", type=Path, required=True, help="its 0-step control (align.max_steps=0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=None, help="default: rec comm_rank (world), rec (MovieLens)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run: the base LLM of the tables")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="default: all three")
    ap.add_argument("--tag", default=None, help="outputs/experiments/align_effect/<tag>/ (default: --data)")
    args = ap.parse_args()
    tasks = args.tasks or (["rec", "comm_rank"] if args.data == "world" else ["rec"])
    out = OUT / (args.tag or args.data)
    rows = dict(zip(ROWS, (["embed.mlp_seed=0"], [f"init_from={args.control.resolve()}"],
                           [f"init_from={args.aligned.resolve()}"])))
    path = out / "results.json"
    results: dict[str, list] = {f"{task} | {row}": [] for task in tasks for row in rows if row in args.rows}
    for seed in args.seeds:  # seed by seed: a stopped script has every row of its first seeds
        for task in tasks:
            for row, row_args in rows.items():
                if row not in args.rows:
                    continue
                t0 = time.perf_counter()
                overrides = [f"task={task}", f"seed={seed}", *recipe(args.data, task), *args.extra, *row_args]
                r = fine_tune(overrides, out / row.replace(" ", "-") / task / f"seed{seed}")
                results[f"{task} | {row}"].append(r)
                print(f"{task:9s} {row:15s} seed {seed}: full ndcg@10 {r['test']['full']['ndcg@10']:.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results,
                                            "table": table(results)}, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
