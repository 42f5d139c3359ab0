"""Fine-tune throughput of the official LSVCR code on our synthetic world, measured like bench_finetune.

    git -C <mirror of zhengbw0324/LSVCR> archive HEAD | tar -x -C /tmp/official
    python experiments/bench_official_finetune.py --official /tmp/official --task rec --threads 1
    python experiments/bench_official_finetune.py --official /tmp/official --task comm_rank --threads 1

Nothing of the official code is copied here: it is imported from the ``--official`` checkout
(``finetune_data.py``, ``collator.py``, ``model/finetune_reccom.py``, ``model/modeling_reccom.py``).
This script writes our default world (prepared by our ``stage=prepare`` code path, so both
implementations train on the same samples) in the official JSON/pickle layout, with random
``[V+1, 256]`` / ``[C+1, 256]`` text tables, and runs the official Dataset + FinetuneCollator
(in-process, ``num_workers=0``) + FinetuneRecComModel + AdamW with ``run_finetune.sh``'s settings:
batch 512, history 50, lr 1e-3, weight decay 1e-5, ID-text weight 0.1 with 99 negatives, 19
negative comments, full softmax for rec; model defaults of its ``arguments.py`` (2 layers, 2 heads,
d 64, inner 256, dropout 0.3).

``torch_scatter`` and ``torch_geometric`` are not installed, so the two functions the official
fine-tuning code imports from them (``scatter_mean``, ``to_dense_batch``) are provided by small
vectorised stand-ins written to a temporary directory. ``to_dense_batch`` is given the true batch
size: PyG sizes the batch as ``batch.max() + 1``, which is short when the last samples of a batch
have no comment history (30% of our users never comment), and the official model then fails to
concatenate the two histories.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_finetune as bf  # noqa: E402  (sibling script: world preparation and random tables)

SCATTER = '''
import torch

def scatter_mean(src, index, dim=0):
    assert dim == 0
    n = int(index.max()) + 1 if index.numel() else 0
    out = src.new_zeros(n, *src.shape[1:]).index_add_(0, index, src)
    count = torch.bincount(index, minlength=n).clamp(min=1).to(src.dtype)
    return out / count.view(-1, *([1] * (src.dim() - 1)))
'''

DENSE = '''
import torch

BATCH_SIZE = None  # set before every step: the true batch size

def to_dense_batch(x, batch):
    b = BATCH_SIZE if BATCH_SIZE is not None else (int(batch.max()) + 1 if batch.numel() else 1)
    counts = torch.bincount(batch, minlength=b)
    width = int(counts.max()) if counts.numel() else 0
    pos = torch.arange(batch.numel()) - (torch.cumsum(counts, 0) - counts)[batch]
    out = x.new_zeros(b, width, *x.shape[1:])
    out[batch, pos] = x
    mask = torch.zeros(b, width, dtype=torch.bool)
    mask[batch, pos] = True
    return out, mask
'''


def write_shims(root: Path) -> None:
    (root / "torch_geometric").mkdir(parents=True, exist_ok=True)
    (root / "torch_scatter.py").write_text(SCATTER)
    (root / "torch_geometric" / "__init__.py").write_text("")
    (root / "torch_geometric" / "utils.py").write_text(DENSE)


def _groups(ds, lo: int, hi: int) -> list:
    """Comment history rows ``lo:hi`` as the official ``[[videos], [[comments], ...]]``, groups in
    order of first interaction."""
    groups: dict[int, tuple[int, list[int]]] = {}
    rows = zip(np.asarray(ds.ci_group[lo:hi]).tolist(), np.asarray(ds.ci_video[lo:hi]).tolist(),
               np.asarray(ds.ci_comment[lo:hi]).tolist())
    for g, v, c in rows:
        groups.setdefault(g, (v, []))[1].append(c)
    order = sorted(groups)
    return [[groups[g][0] for g in order], [groups[g][1] for g in order]]


def write_world(ds, out: Path) -> None:
    """Our prepared dataset in the official layout; raw id i is our index i (0 = padding)."""
    out.mkdir(parents=True, exist_ok=True)
    v, c = ds.num_videos, ds.num_comments
    with open(out / "all_photos.pkl", "wb") as f:
        pickle.dump(list(range(v + 1)), f)
    with open(out / "all_comments.pkl", "wb") as f:
        pickle.dump(list(range(c + 1)), f)
    ptr, vc = np.asarray(ds.video_comment_ptr), np.asarray(ds.video_comments)
    photos = {str(i): {"comment_list": vc[ptr[i]:ptr[i + 1]].tolist()} for i in range(1, v + 1)}
    (out / "photo.json").write_text(json.dumps(photos))
    np.save(out / "photo_embs.npy", bf.random_table(v + 1, 256, 1).numpy())
    np.save(out / "comment_embs.npy", bf.random_table(c + 1, 256, 2).numpy())
    for task in ("rec", "comm_rank"):
        s = ds.samples(task, "train")
        with open(out / f"{task}.train.json", "w") as f:
            for i in range(len(s)):
                u = int(s.user[i])
                row = {"user_id": u, "target_photo": int(s.target[i]),
                       "photo_inter_his": np.asarray(ds.vi_video[ds.vi_ptr[u]:s.vi_end[i]]).tolist(),
                       "comment_inter_his": _groups(ds, int(ds.ci_ptr[u]), int(s.ci_end[i]))}
                if task == "comm_rank":
                    row["pos_comments"] = s.positives(i).tolist()
                f.write(json.dumps(row) + "\n")


def official_args(data: Path) -> SimpleNamespace:
    return SimpleNamespace(
        data_path=str(data), max_phis_len=50, max_chis_len=50, max_candidate_num=100,
        photo_emb_file="photo_embs.npy", comment_emb_file="comment_embs.npy", neg_photo_num=-1,
        neg_comment_num=19, llm_hidden_size=4096, llm_emb_size=256, temperature=0.07, id_text_loss_weight=0.1,
        disable_id=False, n_layers=2, n_mix_layers=1, n_heads=2, hidden_size=64, inner_size=256,
        hidden_dropout_prob=0.3, attn_dropout_prob=0.3, hidden_act="gelu", max_position=50, contrast_neg_num=99)


def bench(official: Path, data: Path, task: str, steps: int, warmup: int) -> dict:
    sys.path[:0] = [str(data.parent / "shims"), str(official)]
    import torch_geometric.utils as dense_shim
    from collator import FinetuneCollator
    from finetune_data import FtCommRankDataset, FtRecDataset
    from model.finetune_reccom import FinetuneRecComModel

    a = official_args(data)
    torch.manual_seed(0)
    np.random.seed(0)
    dataset = (FtRecDataset if task == "rec" else FtCommRankDataset)(a, mode="train")
    # drop_last: on a batch with fewer than 2 x 99 comment-history items the official ID-text loss
    # fails (topk k out of range); only an epoch's last, partial batch is that small here
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, shuffle=True, num_workers=0, drop_last=True,
                                         collate_fn=FinetuneCollator(a, dataset.photo_embs, dataset.comment_embs))
    model = FinetuneRecComModel(a, dataset).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()

    def endless():
        while True:
            yield from loader

    it = endless()
    phases = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)
    samples = 0

    def step(timed: bool) -> None:
        nonlocal samples
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        labels = batch.pop("labels")
        dense_shim.BATCH_SIZE = len(labels)
        opt.zero_grad()
        logits, id_text_loss = model(**batch)
        loss = loss_fn(logits, labels) + id_text_loss
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if timed:
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k] += dt
            samples += len(labels)

    for _ in range(warmup):
        step(False)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"samples_per_s": samples / wall, "samples_per_cpu_s": samples / cpu, "wall": wall, "samples": samples,
            "phases": phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, type=Path, help="a checkout of zhengbw0324/LSVCR")
    ap.add_argument("--task", default="rec", choices=["rec", "comm_rank"])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=None, help="where the world and shims go (default: a temp dir)")
    args = ap.parse_args()
    if not (args.official / "model" / "finetune_reccom.py").exists():
        raise SystemExit(f"{args.official}: not a checkout of zhengbw0324/LSVCR (no model/finetune_reccom.py)")

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_official_"))
    data = work / "data"
    if not (data / "comm_rank.train.json").exists():
        write_world(bf.prepare_world(argparse.Namespace(prepared_dir=None, scale=1.0)), data)
    write_shims(work / "shims")
    r = bench(args.official, data, args.task, args.steps, args.warmup)
    print(f"official {args.task}: {r['samples_per_s']:.0f} samples/s ({r['samples']} samples in {r['wall']:.2f}s, "
          f"{args.steps} steps after {args.warmup} warm-up; {r['samples_per_cpu_s']:.0f} samples per CPU-second); "
          "per step ms: " + ", ".join(f"{k} {1000 * v / args.steps:.0f}" for k, v in r["phases"].items())
          + f"; peak RSS {bf._peak_rss_mb():.0f} MB", flush=True)


if __name__ == "__main__":
    main()
