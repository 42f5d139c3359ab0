"""What the embedded synthetic world lets a model reach, and what the text tables carry.

    python experiments/diagnose_world.py                                   # default world (mechanisms on)
    python experiments/diagnose_world.py --overrides data.mechanisms=false # every mechanism off
    python experiments/diagnose_world.py --overrides data.num_users=300 --splits val

Prints, on the test split with the evaluator's own candidates and metrics (overall and on the cold
and warm targets, ``eval.cold_max_train_interactions``):
- rec ceilings from the generator's ground truth: an oracle that knows every user's hidden
  preferences and the latent state the target was drawn from (latest genuine view, time); and
  "perfect reader" scorers that know each video's true topic and sub-interest (what a text model
  could reach if its tables encoded them perfectly) but must infer the user's preferences from the
  histories the models see: from the video history alone, or with the comment history too (whose
  videos are all genuine interest), and "without text for cold targets" (a cold video's topic is
  unknown, as to a model that learns it from interactions); next to popularity;
- comm_rank ceilings: the oracle, a reader that knows comment styles (with and without the
  candidates' like counts, which LSVCR's SR never sees), next to most-liked-first;
- linear probes of every embed-stage table of the dataset: held-out accuracy of predicting a
  video's topic from its title row and a comment's style from its text row.

Nothing here trains an SR; it explains the numbers compare_finetune.py / ablate_finetune.py print.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.synthetic import SyntheticConfig, WorldTruth, generate
from lsvcr.metrics.evaluator import Evaluator
from lsvcr.models.baseline import Baseline
from lsvcr.models.popularity import MostLiked, Popularity
from lsvcr.pipelines.common import eval_config, load_dataset
from lsvcr.tasks import task_named

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "experiments" / "compare"  # compare_finetune.py's world and tables


class _TruthScorer(Baseline):
    """Scores from the ground truth, indexed by prepared indices (row ``raw id - 1`` of ``truth``).

    Modes: ``oracle``; ``reader`` (rec: topics and sub-interests known, preferences from the video
    history; comm_rank: styles known); ``reader_comments`` (rec: also the comment history);
    ``reader_no_cold_text`` (rec: as ``reader_comments``, but a cold video's topic is unknown);
    ``reader_text`` (comm_rank: styles known, no like counts).
    """

    def __init__(self, ds, truth: WorldTruth, mode: str, split: str = "test", cold_cut: int = 5):
        self.truth, self.mode, self.num_videos = truth, mode, ds.num_videos
        self.video_row = np.r_[0, np.asarray(ds.raw_ids("videos")).astype(np.int64) - 1]
        self.comment_row = np.r_[0, np.asarray(ds.raw_ids("comments")).astype(np.int64) - 1]
        self.user_row = np.r_[0, np.asarray(ds.raw_ids("users")).astype(np.int64) - 1]
        counts = np.bincount(np.asarray(ds.samples("rec", "train").target), minlength=ds.num_videos + 1)
        self.num_topics, self.num_styles, self.s = len(truth.topic_names), len(truth.style_names), truth.num_subtopics
        self.topic = truth.video_topic[self.video_row]
        sub = np.zeros(len(self.video_row), np.int64) if truth.video_subtopic is None else \
            truth.video_subtopic[self.video_row]
        self.segment = self.topic * self.s + sub  # [V+1] (topic, sub-interest) of each prepared video
        self.known = counts > cold_cut if mode == "reader_no_cold_text" else np.ones(len(counts), bool)
        self.in_seg_est = self._in_segment(ds, counts, cold_cut)
        self.pop_est = (counts + 1.0) / (counts[1:] + 1.0).sum()
        if mode == "oracle":
            samples = ds.samples("rec", split)
            self.ctx_users, self.ctx_prev, self.ctx_times = truth.sample_context(ds, samples)
            self.ctx_row = np.full(ds.num_users + 1, -1)
            self.ctx_row[np.asarray(samples.user)] = np.arange(len(samples))  # one sample per user (loo)

    def _in_segment(self, ds, counts: np.ndarray, cut: int) -> np.ndarray:
        """P(video | its segment) as a model that can count could estimate it from training data:
        a warm video by its training count; the segment's cold videos share, evenly, the part of
        the segment's training targets that were cold when watched (at most ``cut`` earlier views)."""
        train = ds.samples("rec", "train")
        target, order = np.asarray(train.target), np.argsort(np.asarray(train.time), kind="stable")
        by_video = np.lexsort((np.arange(len(order)), target[order]))  # time order within each video
        t_sorted = target[order][by_video]
        prior = np.arange(len(t_sorted)) - np.searchsorted(t_sorted, t_sorted)  # earlier views of it
        k = self.num_topics * self.s
        seg = self.segment[t_sorted]
        cold_share = (np.bincount(seg, prior < cut, k) + 1.0) / (np.bincount(seg, minlength=k) + 2.0)
        cold = counts <= cut
        n_cold = np.bincount(self.segment[1:], cold[1:], k)
        warm_mass = np.bincount(self.segment[1:], np.where(cold, 0, counts)[1:], k)
        seg_of = self.segment
        warm_p = (1 - cold_share[seg_of]) * counts / np.maximum(warm_mass[seg_of], 1)
        cold_p = cold_share[seg_of] / np.maximum(n_cold[seg_of], 1)
        return np.where(cold, cold_p, warm_p)

    def _users(self, history: HistoryBatch) -> np.ndarray:
        return self.user_row[history.user.cpu().numpy()]

    def score_videos(self, history: HistoryBatch, candidates):
        v = history.v_video.cpu().numpy()
        cands = np.arange(1, len(self.video_row))[None].repeat(len(v), 0) if candidates is None else \
            candidates.cpu().numpy()
        if self.mode == "oracle":
            i = self.ctx_row[history.user.cpu().numpy()]
            p = self.truth.next_video_prob(self.ctx_users[i], self.ctx_prev[i], self.video_row[cands],
                                           self.ctx_times[i])
        else:
            p = self._reader_prob(v, history.c_video.cpu().numpy(), cands)
        # random tie-breaking far below any real difference (the evaluator ranks ties pessimistically)
        out = torch.from_numpy(np.log(p + 1e-30) + 1e-6 * np.random.default_rng(0).random(p.shape)).float()
        if candidates is None:
            out = torch.cat([torch.full((len(v), 1), -1e30), out], 1)  # column 0 = padding
        return out

    def _reader_prob(self, v: np.ndarray, c: np.ndarray, cands: np.ndarray) -> np.ndarray:
        """Topic chain and (sub-)interest preferences estimated from the histories' known segments."""
        t, k, s = self.truth, self.num_topics, self.s
        use_comments = self.mode in ("reader_comments", "reader_no_cold_text")
        hist = np.zeros((len(v), k * s))
        for rows, weight in ((v, 1.0), (c, 3.0 if use_comments else 0.0)):  # commented videos are genuine
            r, col = np.nonzero((rows > 0) & self.known[rows])
            np.add.at(hist, (r, self.segment[rows[r, col]]), weight)
        seg_pref = (hist + 0.1) / (hist.sum(1, keepdims=True) + 0.1 * k * s)
        topic_pref = seg_pref.reshape(len(v), k, s).sum(2)
        last = v[np.arange(len(v)), np.maximum((v > 0).sum(1) - 1, 0)]
        current = np.where(self.known[last], self.topic[last], -1)
        if use_comments:  # the latest commented video: a genuine interest, often more telling
            last_c = c[np.arange(len(c)), np.maximum((c > 0).sum(1) - 1, 0)]
            current = np.where((last_c > 0) & self.known[last_c], self.topic[last_c], current)
        cand_seg, cand_topic = self.segment[cands], self.topic[cands]
        same = (cand_topic == current[:, None]).astype(np.float64)
        p_topic = t.topic_stickiness * same + (1 - t.topic_stickiness) * np.take_along_axis(topic_pref, cand_topic, 1)
        p_sub = np.take_along_axis(seg_pref, cand_seg, 1) / np.take_along_axis(topic_pref, cand_topic, 1)
        genuine = p_topic * p_sub * self.in_seg_est[cands]
        # a video whose topic the reader cannot know: scored by its popularity alone
        genuine = np.where(self.known[cands], genuine, self.pop_est[cands])
        return (1 - t.view_noise) * genuine + t.view_noise * self.pop_est[cands]

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


def _scorers(ds, truth: WorldTruth, split: str, cut: int) -> dict:
    return {"rec": {"popularity": Popularity().fit(ds),
                       "reader, video history": _TruthScorer(ds, truth, "reader", split, cut),
                       "reader, + comment history": _TruthScorer(ds, truth, "reader_comments", split, cut),
                       "reader, + comments, no cold text": _TruthScorer(ds, truth, "reader_no_cold_text", split, cut),
                       "oracle (latent state known)": _TruthScorer(ds, truth, "oracle", split, cut)},
               "comm_rank": {"most_liked": MostLiked().fit(ds), "perfect reader (styles known)":
                             _TruthScorer(ds, truth, "reader"), "perfect reader, no like counts":
                             _TruthScorer(ds, truth, "reader_text"), "oracle (user preferences known)":
                             _TruthScorer(ds, truth, "oracle")}}

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
    ecfg = replace(eval_config(cfg), progress=False)
    results = {}
    for split in args.splits:
        for task, named in _scorers(ds, truth, split, cfg.eval.cold_max_train_interactions).items():
            ev = Evaluator(ds, gatherer, task_named(task), ecfg)
            for name, scorer in named.items():
                r = ev.evaluate(scorer, split)
                results[f"{task}/{split}/{name}"] = r
                cells = "  ".join(f"{p} {r[p]['ndcg@10']:.4f}" for p in ("full", "full/cold", "full/warm", "sampled")
                                  if p in r)
                print(f"{task:9s} {split:4s} {name:34s} NDCG@10: {cells}", flush=True)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
