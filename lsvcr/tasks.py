"""The tasks, as objects: ``conf/task/<name>.yaml`` names its class by ``_target_``.

A task owns everything that differs between video recommendation (rec) and comment ranking
(comm_rank), so no other module branches on a task's name:

- its checks: the stages that run it, the data it needs (comment interactions), the SRs that
  answer it (an SR lists its :attr:`~lsvcr.models.sr.layers.SequentialRecommender.tasks`);
- its fine-tuning batches (:mod:`lsvcr.data.loader`) and loss (:mod:`lsvcr.losses.recommend`);
- its evaluation: :attr:`Task.ranking` (:mod:`lsvcr.metrics.evaluator`) draws the candidates and
  ranks them; the read-out follows from what is scored (``video_user`` for videos,
  ``comment_user`` for comments);
- for alignment, the sample sets it mixes (:attr:`Task.sample_sets`; ``joint`` mixes both).

::

    task = build_task(cfg.task)                          # RecTask(neg_num=-1)
    task.check_sr(sr, "lsvcr")
    batches = task.train_batches(ds, gatherer, sr, TrainSpec(batch_size=512, seed=0))
    loss = FinetuneLoss(task.task_loss(train_on="samples"))
    Evaluator(ds, gatherer, task, EvalConfig()).evaluate(model, "val")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lsvcr.data.history import HistoryGatherer
from lsvcr.data.loader import CommRankBatches, RecBatches, SequenceBatches
from lsvcr.data.store import PreparedDataset
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import comm_rank_task_loss, rec_task_loss, sequence_task_loss
from lsvcr.metrics.evaluator import CommentRanking, Ranking, VideoRanking

log = logging.getLogger("lsvcr")

#: how fine-tuning iterates the training set (``finetune.train_on``)
TRAIN_ON = ("samples", "sequences")


@dataclass
class TrainSpec:
    """The fine-tuning stage's batch settings (``finetune.*``; ``rank``/``world``: this process's share)."""

    batch_size: int
    seed: int
    train_on: str = "samples"
    rank: int = 0
    world: int = 1
    max_len: int = 50  # data.max_phis_len: the window length of train_on=sequences
    sequence_stride: int | None = None

    def __post_init__(self):
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"finetune.train_on={self.train_on}: expected one of {', '.join(TRAIN_ON)}")


class Task:
    """A task: its name, the sample sets it reads, the stages that run it and its checks."""

    name: ClassVar[str]
    #: the prepared sample sets (``samples/<name>.<split>``) the task trains on
    sample_sets: ClassVar[tuple[str, ...]]
    #: whether the task ranks comments (the data must have comment interactions)
    ranks_comments: ClassVar[bool] = False
    #: the stages that can run the task
    stages: ClassVar[tuple[str, ...]] = ("finetune", "evaluate", "align")
    #: what evaluation ranks (None: the task is not evaluated on its own)
    ranking: Ranking | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def check_stage(self, stage: str, hint: str) -> None:
        """One clear error when ``stage`` cannot run this task (``hint``: what it runs instead)."""
        if stage not in self.stages:
            raise ConfigError(f"task={self.name}: {hint}")

    def check_data(self, ds: PreparedDataset, data_name: str) -> None:
        """One clear error when ``ds`` lacks what the task ranks (comment interactions)."""
        if self.ranks_comments and not int(ds.manifest["counts"]["comment_interactions"]):
            raise ConfigError(f"task={self.name} ranks comments, but data={data_name} has no comment interactions "
                              f"({ds.num_comments} comments, 0 comment interactions in {ds.root}); use task=rec")

    def check_sr(self, sr, sr_name: str) -> None:
        """One clear error when the SR ``sr`` (``model/sr=sr_name``) does not answer this task."""
        missing = [t for t in self.sample_sets if t not in sr.tasks]
        if missing:
            raise ConfigError(f"model/sr={sr_name} answers task={', '.join(sr.tasks)} only and cannot do "
                              f"task={self.name}; use task=rec")


class RecTask(Task):
    """Video recommendation: rank the videos for the user's next one.

    Args:
        neg_num: fine-tuning negatives per sample: ``-1`` = softmax over every video, ``N`` = N
            sampled negatives.
    """

    name = "rec"
    sample_sets = ("rec",)
    ranking = VideoRanking()

    def __init__(self, neg_num: int = -1):
        self.neg_num = int(neg_num)

    def train_batches(self, ds: PreparedDataset, gatherer: HistoryGatherer, sr, spec: TrainSpec, sr_name: str = "sr"):
        """One sample per target (the paper's, every SR), or whole-sequence windows with every
        position a target (``train_on=sequences``: SASRec's own training, a causal SR only)."""
        samples = ds.samples(self.name, "train")
        if spec.train_on == "samples":
            return RecBatches(ds, samples, gatherer, spec.batch_size, self.neg_num, spec.seed, spec.rank, spec.world)
        if not sr.trains_on_sequences:
            raise ConfigError(f"finetune.train_on=sequences trains a causal SR on task=rec (model/sr=sasrec, or "
                              f"model/sr=lsvcr with model.sr.use_comment_history=false model.sr.position_align=start); "
                              f"not model/sr={sr_name}")
        if self.neg_num != -1:
            raise ConfigError(f"finetune.train_on=sequences trains with a softmax over every video: set task.neg_num=-1 "
                              f"(not {self.neg_num})")
        batches = SequenceBatches(ds, samples, spec.max_len, spec.sequence_stride, spec.batch_size, spec.seed,
                                  spec.rank, spec.world)
        log.info("training on %d sequence windows (%d targets; %d without a video history left out)",
                 len(batches.w_start), batches.num_targets, batches.dropped)
        return batches

    def task_loss(self, train_on: str = "samples"):
        return sequence_task_loss if train_on == "sequences" else rec_task_loss


class CommRankTask(Task):
    """Comment ranking: rank the comments of the video the user is watching.

    Args:
        neg_num: fine-tuning negatives per positive, from the same video's comments (random
            ones if it has too few); at least 1.
    """

    name = "comm_rank"
    sample_sets = ("comm_rank",)
    ranks_comments = True
    ranking = CommentRanking()

    def __init__(self, neg_num: int = 19):
        if int(neg_num) < 1:
            raise ConfigError(f"task.neg_num={neg_num}: comm_rank needs at least one negative comment per positive")
        self.neg_num = int(neg_num)

    def train_batches(self, ds: PreparedDataset, gatherer: HistoryGatherer, sr, spec: TrainSpec, sr_name: str = "sr"):
        if spec.train_on != "samples":
            raise ConfigError(f"finetune.train_on={spec.train_on} trains a causal SR on task=rec, not task={self.name}")
        return CommRankBatches(ds, ds.samples(self.name, "train"), gatherer, spec.batch_size, self.neg_num, spec.seed,
                               spec.rank, spec.world)

    def task_loss(self, train_on: str = "samples"):
        return comm_rank_task_loss


class JointTask(Task):
    """rec and comm_rank samples mixed in one training set: the alignment stage only (DESIGN section 4)."""

    name = "joint"
    sample_sets = ("rec", "comm_rank")
    ranks_comments = True
    stages = ("align",)


#: every task class by its name
TASK_CLASSES: dict[str, type[Task]] = {cls.name: cls for cls in (RecTask, CommRankTask, JointTask)}


def task_named(name: str, **kwargs) -> Task:
    """The task ``name`` with its defaults (or ``kwargs``), for code that does not compose a config."""
    if name not in TASK_CLASSES:
        raise ConfigError(f"task={name}: expected one of {', '.join(TASK_CLASSES)}")
    return TASK_CLASSES[name](**kwargs)


def build_task(node: DictConfig) -> Task:
    """The task object of a ``task`` config node (``_target_`` plus its arguments; ``name`` must
    agree with the class, since run names and metadata use it)."""
    if "_target_" not in node:
        raise ConfigError(f"task={node.get('name')}: the task node has no _target_ (conf/task/<name>.yaml names "
                          f"its class, e.g. lsvcr.tasks.RecTask)")
    args = OmegaConf.to_container(node, resolve=True)
    name = args.pop("name", None)
    try:
        task = instantiate(args)
    except InstantiationException as e:  # Hydra wraps what the constructor raised
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise ConfigError(f"task._target_={node._target_}: {str(e).splitlines()[0]}") from None
    if not isinstance(task, Task):
        raise ConfigError(f"task._target_={node._target_} is not a task class (lsvcr.tasks.Task)")
    if name is not None and name != task.name:
        raise ConfigError(f"task.name={name} but task._target_={node._target_} is task {task.name}")
    return task
