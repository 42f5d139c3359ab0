"""Fine-tuning throughput, full-ranking evaluation throughput and peak RSS on a synthetic world.

    python experiments/bench_finetune.py                          # default world, rec + comm_rank, lsvcr + sasrec
    python experiments/bench_finetune.py --threads 1              # one thread (faster on a busy machine)
    python experiments/bench_finetune.py --profile                # + torch.profiler top 10 per run
    python experiments/bench_finetune.py --models --eval-videos 1000000   # only full ranking against 1M videos
    python experiments/bench_finetune.py --scale 10 --models lsvcr --tasks rec
    python experiments/bench_finetune.py --prepared-dir outputs/data/synthetic-<hash>   # an existing dataset

The world is prepared through the real ``stage=prepare`` code path (``lsvcr.pipelines.common.prepare``)
into a temporary directory, or read from ``--prepared-dir``. Text tables are random ``[V+1, 256]`` /
``[C+1, 256]`` tensors (row 0 = padding): the text content does not change the cost. Model and
optimiser settings are the composed Hydra config (``stage=finetune``, ``model/sr=<model>``,
``task=<task>``): batch 512, history 50, d 64, ID-text weight 0.1 with 99 negatives, AdamW; rec is a
softmax over every video, comm_rank has 19 negatives per positive.

Training: samples/s over ``--steps`` steps after ``--warmup`` steps, with batch construction
(``TrainBatches``) inside the timed loop as ``stage=finetune`` iterates it, split into data /
forward / backward / optimizer milliseconds per step. Samples per CPU-second (process time) is
printed too: on a machine shared with other jobs it moves far less than wall-clock figures, and
with ``--threads 1`` it is what an idle core would deliver.

Evaluation (``--eval-videos N``): users/s of full-ranking rec against an LSVCR model with ``N``
videos (random title table, so ``score_videos`` and ``all_videos`` do their real work), once
through the real ``Evaluator`` (``score_videos`` + ``ranks_single``) and once through the fused
``Recommender.rank_videos`` where the model has it, which must give the same metrics; plus the GFLOP/s of this machine's
``[*, 64] x [64, *]`` products, which bound full ranking at ``GFLOP/s / (2 * 64 * N)`` users/s.

Peak RSS is the process's peak so far, printed after each figure. The machine's load average is
printed first: repeat runs when it is high.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure this checkout's lsvcr, whatever copy is installed


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from lsvcr.utils.resolvers import register

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_world(args):
    """The prepared dataset: ``--prepared-dir``, or a fresh synthetic world of ``--scale``."""
    from lsvcr.data.store import PreparedDataset
    from lsvcr.pipelines.common import prepare

    if args.prepared_dir:
        return PreparedDataset(args.prepared_dir)
    out = Path(tempfile.mkdtemp(prefix="bench_finetune_")) / "ds"
    cfg = _compose(["stage=prepare", f"data.num_users={int(1000 * args.scale)}",
                    f"data.num_videos={int(1500 * args.scale)}", f"data.prepared_dir={out}"])
    t0 = time.perf_counter()
    prepare(cfg)
    print(f"prepared world in {time.perf_counter() - t0:.1f}s at {out}", flush=True)
    return PreparedDataset(out)


def random_table(rows: int, width: int, seed: int) -> torch.Tensor:
    """``[rows, width]`` float32 N(0, 1) rows, row 0 (padding) zero."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, width, generator=g)
    table[0] = 0
    return table


def build_model(model: str, task: str, num_videos: int, num_comments: int):
    """A :class:`Recommender` with the config's settings, on random text tables."""
    from lsvcr.models.recommender import Recommender
    from lsvcr.pipelines.common import build

    cfg = _compose(["stage=finetune", f"task={task}", f"model/sr={model}"])
    sr = build(cfg.model.sr, num_videos=num_videos)
    video = comment = None
    if sr.use_text:
        width = sr.adapter.in_features
        video = random_table(num_videos + 1, width, 1)
        comment = random_table(num_comments + 1, width, 2)
    return Recommender(sr, video, comment, None), cfg


def _batches(ds, cfg, model):
    from lsvcr.data.history import HistoryGatherer
    from lsvcr.tasks import TrainSpec, build_task

    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    return build_task(cfg.task).train_batches(ds, gatherer, model.sr, TrainSpec(cfg.finetune.batch_size, cfg.seed))


def _endless(batches):
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def _batch_size(batch) -> int:
    return len(batch.history.target)


def train_bench(ds, model_name: str, task: str, args) -> dict:
    """Samples/s over ``args.steps`` steps after ``args.warmup``; seconds per phase."""
    from lsvcr.losses.recommend import FinetuneLoss
    from lsvcr.tasks import build_task

    model, cfg = build_model(model_name, task, ds.num_videos, ds.num_comments)
    model.train()
    loss_fn = FinetuneLoss(build_task(cfg.task).task_loss(), cfg.finetune.id_text_loss_weight,
                           cfg.finetune.id_text_negatives)
    o = cfg.optim
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                            weight_decay=o.weight_decay, betas=tuple(o.betas))
    generator = torch.Generator().manual_seed(0)
    it = _endless(_batches(ds, cfg, model))
    phases = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)
    samples = 0

    def step(timed: bool) -> None:
        nonlocal samples
        t0 = time.perf_counter()
        batch = next(it).to("cpu")
        t1 = time.perf_counter()
        out = model(batch, loss_fn, generator=generator)
        t2 = time.perf_counter()
        out["loss"].backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if timed:
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k] += dt
            samples += _batch_size(batch)

    for _ in range(args.warmup):
        step(False)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step(True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {"samples_per_s": samples / wall, "samples_per_cpu_s": samples / cpu, "wall": wall, "cpu": cpu,
              "samples": samples, "phases": phases}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step(False)
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
    return result


class _WithVideos:
    """A prepared dataset seen as if it had ``num_videos`` videos (histories stay the world's;
    every index stays valid because the bench table is larger)."""

    def __init__(self, ds, num_videos: int):
        self._ds, self.num_videos = ds, num_videos

    def __getattr__(self, name):
        return getattr(self._ds, name)


def matmul_gflops(rows: int, cols: int, d: int = 64, total_cols: int = 1 << 20) -> float:
    """GFLOP/s of ``[rows, d] x [d, cols]`` products over ``total_cols`` distinct columns (best of 3)."""
    a, b = torch.randn(rows, d), torch.randn(total_cols, d)
    out = torch.empty(rows, cols)

    def sweep():
        for lo in range(0, total_cols, cols):
            torch.mm(a, b[lo : lo + cols].T, out=out)

    sweep()
    return 2 * rows * total_cols * d / min(_timed(sweep) for _ in range(3)) / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def eval_bench(ds, args) -> dict:
    """Users/s of full-ranking rec against ``args.eval_videos`` videos: the real ``Evaluator`` path
    (``score_videos`` + ``ranks_single`` on 2^25-score chunks) and the fused ``rank_videos`` path;
    both must give the same metrics."""
    from lsvcr.data.history import HistoryGatherer
    from lsvcr.metrics.evaluator import EvalConfig, Evaluator
    from lsvcr.metrics.ranking import RankingMetrics
    from lsvcr.tasks import build_task

    n = args.eval_videos
    model, cfg = build_model("lsvcr", "rec", n, ds.num_comments)
    model.eval()
    with torch.inference_mode():
        table_s = _timed(model.all_videos)  # the projection of every title, once per evaluation
    view = _WithVideos(ds, n)
    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    ecfg = EvalConfig(protocols=("full",), batch_size=cfg.eval.batch_size, progress=False)
    evaluator = Evaluator(view, gatherer, build_task(cfg.task), ecfg)
    samples = ds.samples("rec", args.eval_split)
    users = len(samples)
    reference = evaluator.evaluate(model, args.eval_split)["full"]  # also the warm-up
    times = [_timed(lambda: evaluator.evaluate(model, args.eval_split)) for _ in range(args.eval_repeats)]

    def fused() -> dict:
        metrics = RankingMetrics(ks=ecfg.recall_ks, ndcg_ks=ecfg.ndcg_ks, mrr_ks=ecfg.mrr_ks)
        with torch.inference_mode():
            for lo in range(0, users, ecfg.batch_size):
                metrics.update(model.rank_videos(gatherer(samples, np.arange(lo, min(lo + ecfg.batch_size, users)))))
        return metrics.compute()

    out = {"videos": n, "users": users, "table_s": table_s, "users_per_s": users / min(times), "times": times}
    fused_metrics = fused()  # Recommender.rank_videos: scoring and ranking fused, no [B, V+1] matrix
    fused_times = [_timed(fused) for _ in range(args.eval_repeats)]
    out.update(fused_users_per_s=users / min(fused_times), fused_times=fused_times,
               same_metrics=all(abs(reference[k] - fused_metrics[k]) < 1e-9 for k in reference))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="world size: 1000*scale users, 1500*scale videos")
    ap.add_argument("--prepared-dir", default=None, help="an existing prepared dataset instead of a new world")
    ap.add_argument("--models", nargs="*", default=["lsvcr", "sasrec"], help="none: skip training")
    ap.add_argument("--tasks", nargs="+", default=["rec", "comm_rank"])
    ap.add_argument("--steps", type=int, default=30, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--profile", action="store_true", help="print the torch.profiler top 10 per run")
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--eval-videos", type=int, default=0, help="full-ranking evaluation at this many videos (0 = skip)")
    ap.add_argument("--eval-split", default="test", choices=["val", "test"])
    ap.add_argument("--eval-repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)
    ds = prepare_world(args)
    print(f"world: {ds.num_users} users, {ds.num_videos} videos, {ds.num_comments} comments, train samples "
          f"rec {len(ds.samples('rec', 'train'))}, comm_rank {len(ds.samples('comm_rank', 'train'))}", flush=True)
    for model in args.models:
        for task in args.tasks:
            if model == "sasrec" and task != "rec":
                continue
            r = train_bench(ds, model, task, args)
            p = r["phases"]
            steps = args.steps
            print(f"train {model}/{task}: {r['samples_per_s']:.0f} samples/s ({r['samples']} samples in "
                  f"{r['wall']:.2f}s, {args.steps} steps after {args.warmup} warm-up; "
                  f"{r['samples_per_cpu_s']:.0f} samples per CPU-second); per step ms: "
                  + ", ".join(f"{k} {1000 * v / steps:.0f}" for k, v in p.items())
                  + f"; peak RSS {_peak_rss_mb():.0f} MB", flush=True)
            if args.profile:
                print(r["profile"], flush=True)
    if args.eval_videos:
        big, block = matmul_gflops(1024, 1 << 16), matmul_gflops(128, 4096)
        print(f"matmul GFLOP/s with {args.threads} threads: {big:.0f} for [1024, 64] x [64, 65536] (output to "
              f"memory), {block:.0f} for [128, 64] x [64, 4096] blocks (output in cache) -> at most "
              f"{block * 1e9 / (2 * 64 * args.eval_videos):.0f} users/s for {args.eval_videos} videos at d=64 "
              f"(scores alone, before counting)", flush=True)
        r = eval_bench(ds, args)
        print(f"eval full ranking at {r['videos']} videos, Evaluator path (score_videos + ranks_single): "
              f"{r['users_per_s']:.0f} users/s ({r['users']} users, best of {len(r['times'])}: {min(r['times']):.2f}s; "
              f"video table projection {r['table_s']:.2f}s once)", flush=True)
        if "fused_users_per_s" in r:
            print(f"eval full ranking at {r['videos']} videos, fused Recommender.rank_videos: "
                  f"{r['fused_users_per_s']:.0f} users/s (best of {len(r['fused_times'])}: {min(r['fused_times']):.2f}s); "
                  f"same metrics as the Evaluator path: {r['same_metrics']}", flush=True)
    print(f"peak RSS {_peak_rss_mb():.0f} MB", flush=True)


if __name__ == "__main__":
    main()
