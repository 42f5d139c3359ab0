"""What the embedded synthetic world lets a model reach, and what the text tables carry.

    python experiments/diagnose_world.py                       # default world, every text table found
    python experiments/diagnose_world.py --overrides data.num_users=300 --splits val

Prints, on the test split with the evaluator's own candidates and metrics:
- ceilings from the generator's ground truth: an oracle that knows every user's hidden preferences,
  and "perfect reader" scorers that know each item's true topic/style but must infer the user's
  preferences from the history the models see (what a text model could reach if its tables
  encoded topics and styles perfectly; "no like counts": without the candidate comments' like
  counts, which LSVCR's SR never sees), next to the popularity and most-liked baselines;
- linear probes of every embed-stage table of the dataset: held-out accuracy of predicting a
  video's topic from its title row and a comment's style from its text row (how much of the
  planted signal the text tables carry).

Nothing here trains an SR; it explains the numbers compare_finetune.py / ablate_finetune.py print.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.synthetic import SyntheticConfig, WorldTruth, generate
from lsvcr.metrics.evaluator import EvalConfig, Evaluator
from lsvcr.models.popularity import MostLiked, Popularity
from lsvcr.pipelines.common import load_dataset

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "experiments" / "compare"  # compare_finetune.py's world and tables


class _TruthScorer:
    """Scores from the ground truth, indexed by prepared indices (row ``raw id - 1`` of ``truth``)."""

    def __init__(self, ds, truth: WorldTruth, mode: str):
        self.truth, self.mode = truth, mode
        self.user_row = np.r_[0, np.asarray(ds.raw_ids("users")).astype(np.int64) - 1]
        self.video_row = np.r_[0, np.asarray(ds.raw_ids("videos")).astype(np.int64) - 1]
        self.comment_row = np.r_[0, np.asarray(ds.raw_ids("comments")).astype(np.int64) - 1]
        train = ds.samples("rec", "train")
        counts = np.bincount(np.asarray(train.target), minlength=ds.num_videos + 1).astype(np.float64)
        topic = truth.video_topic[self.video_row]
        # P(video | its topic) estimated from training targets (what a model can count), smoothed
        per_topic = np.bincount(topic[1:], counts[1:] + 1.0, minlength=len(truth.topic_names))
        self.in_topic_est = (counts + 1.0) / per_topic[topic]
        self.num_topics, self.num_styles = len(truth.topic_names), len(truth.style_names)

    def _users(self, history: HistoryBatch) -> np.ndarray:
        return self.user_row[history.user.cpu().numpy()]

    def score_videos(self, history: HistoryBatch, candidates):
        t, v = self.truth, history.v_video.cpu().numpy()
        cands = np.arange(1, len(self.video_row))[None].repeat(len(v), 0) if candidates is None else \
            candidates.cpu().numpy()
        last = v[np.arange(len(v)), np.maximum((v > 0).sum(1) - 1, 0)]
        if self.mode == "oracle":
            p = t.next_video_prob(self._users(history), self.video_row[last], self.video_row[cands])
        else:  # topics known; the user's topic preference from the history's topics (Dirichlet-smoothed)
            topic = t.video_topic[self.video_row]
            hist = np.stack([np.bincount(topic[row[row > 0]], minlength=self.num_topics) for row in v])
            pref = (hist + 1.0) / (hist.sum(1, keepdims=True) + self.num_topics)
            same = topic[cands] == topic[last][:, None]
            p_topic = t.topic_stickiness * same + (1 - t.topic_stickiness) * np.take_along_axis(pref, topic[cands], 1)
            p = p_topic * self.in_topic_est[cands]
        # random tie-breaking far below any real difference (the evaluator ranks ties pessimistically)
        out = torch.from_numpy(np.log(p + 1e-30) + 1e-6 * np.random.default_rng(0).random(p.shape)).float()
        if candidates is None:
            out = torch.cat([torch.full((len(v), 1), -1e30), out], 1)  # column 0 = padding
        return out

    def score_comments(self, history: HistoryBatch, candidates):
        t, c = self.truth, candidates.cpu().numpy()
        rows = self.comment_row[c]
        likes = 0.0 if self.mode == "reader_text" else t.like_beta * np.log1p(t.comment_likes[rows])
        if self.mode == "oracle":
            pref = t.user_style_pref[self._users(history)]
        else:  # styles known; the user's style preference from the comment history (Dirichlet(0.3) mean)
            style = t.comment_style[self.comment_row[history.c_comment.cpu().numpy()]]
            sample = history.c_slot.cpu().numpy() // max(history.c_video.shape[1], 1)
            counts = np.zeros((len(c), self.num_styles))
            np.add.at(counts, (sample, style), 1.0)
            alpha = 0.3
            pref = (counts + alpha) / (counts.sum(1, keepdims=True) + alpha * self.num_styles)
        score = t.style_strength * np.take_along_axis(pref, t.comment_style[rows], 1) + likes
        # comments of one style tie; the evaluator ranks ties pessimistically, a trained model breaks
        # them by noise: break them at random (far below any real score difference)
        score = score + 1e-4 * np.random.default_rng(0).random(score.shape)
        return torch.from_numpy(np.where(c > 0, score, -1e30)).float()


def _probe(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Held-out accuracy of an L2-regularised multinomial logistic regression ``x -> y`` (80/20
    split), and the majority-class accuracy."""
    gen = torch.Generator().manual_seed(seed)
    X, Y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(Y), generator=gen)
    tr, te = perm[: int(0.8 * len(Y))], perm[int(0.8 * len(Y)):]
    X = (X - X[tr].mean(0)) / (X[tr].std(0) + 1e-6)
    k = int(Y.max()) + 1
    W = torch.zeros(X.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X[tr] @ W + b, Y[tr]) + 1e-3 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    acc = ((X[te] @ W + b).argmax(1) == Y[te]).float().mean().item()
    return acc, torch.bincount(Y[te]).max().item() / len(te)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides selecting the world")
    ap.add_argument("--splits", nargs="+", default=["test"])
    ap.add_argument("--data-dir", default=str(OUT / "data"), help="prepared-data root (compare_finetune.py's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.data_dir={args.data_dir}", "paths.run_dir=/unused",
                                           "eval.protocols=[sampled,full]", *args.overrides])
    if cfg.data.name != "synthetic":
        raise SystemExit("diagnose_world.py needs the synthetic world (its ground truth)")
    reader = OmegaConf.to_container(cfg.data.reader, resolve=True)
    known = {f.name for f in fields(SyntheticConfig)}
    _, truth = generate(SyntheticConfig(**{k: v for k, v in reader.items() if k in known}))
    ds = load_dataset(cfg)
    video_row = np.asarray(ds.raw_ids("videos")).astype(np.int64) - 1  # raw ids are strings: "17" -> row 16
    comment_row = np.asarray(ds.raw_ids("comments")).astype(np.int64) - 1
    if not np.array_equal(np.asarray(ds.comment_likes)[1:], truth.comment_likes[comment_row]):
        raise SystemExit("the prepared dataset is not the world these overrides generate")
    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    ecfg = EvalConfig(protocols=tuple(cfg.eval.protocols), rec_sampled_negatives=cfg.eval.rec_sampled_negatives,
                      comm_max_candidates=cfg.eval.comm_max_candidates, seed=cfg.eval.seed, progress=False)
    scorers = {"rec": {"popularity": Popularity().fit(ds), "perfect reader (topics known)":
                       _TruthScorer(ds, truth, "reader"), "oracle (user preferences known)": _TruthScorer(ds, truth, "oracle")},
               "comm_rank": {"most_liked": MostLiked().fit(ds), "perfect reader (styles known)":
                             _TruthScorer(ds, truth, "reader"), "perfect reader, no like counts":
                             _TruthScorer(ds, truth, "reader_text"), "oracle (user preferences known)":
                             _TruthScorer(ds, truth, "oracle")}}
    results = {}
    for task, named in scorers.items():
        ev = Evaluator(ds, gatherer, task, ecfg)
        for split in args.splits:
            for name, scorer in named.items():
                r = ev.evaluate(scorer, split)
                results[f"{task}/{split}/{name}"] = r
                print(f"{task:9s} {split:4s} {name:32s} full NDCG@10 {r['full']['ndcg@10']:.4f}  "
                      f"sampled NDCG@10 {r['sampled']['ndcg@10']:.4f}", flush=True)
    for table_dir in sorted((ds.root / "embeddings").glob("*/")):
        videos, comments = table_dir / "videos.npy", table_dir / "comments.npy"
        if not (videos.exists() and comments.exists()):
            continue
        v_acc, v_major = _probe(np.load(videos)[1:], truth.video_topic[video_row])
        c_acc, c_major = _probe(np.load(comments)[1:], truth.comment_style[comment_row])
        results[f"probe/{table_dir.name}"] = {"topic": v_acc, "style": c_acc}
        print(f"table {table_dir.name}: title -> topic {v_acc:.3f} (majority {v_major:.3f}), "
              f"comment -> style {c_acc:.3f} (majority {c_major:.3f})", flush=True)
    out = OUT.parent / "diagnose_world.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
