"""Alignment throughput and peak memory: model/llm=tiny and model/llm=smollm2_135m through the real stage.

    python experiments/bench_align.py                                   # tiny; smollm2 when its directory exists
    python experiments/bench_align.py --threads 1                       # one thread (steadier on a busy machine)
    python experiments/bench_align.py --smollm2-dir /models/smollm2-135m --models smollm2_135m
    python experiments/bench_align.py --hardware gpu --micro-batch 4 --grad-accum 4 --steps 10 \\
        --prompt-tokens 768 --history 50 --text-tokens 64                # the stage's defaults, on a GPU
    python experiments/bench_align.py --extra align.augment.sample_prob=0   # more overrides for every run

Each model runs ``lsvcr stage=align`` (``python -m lsvcr.main`` of this checkout, in a subprocess)
on the embedded default world for ``--warmup + --steps`` optimizer steps with ``align.log_every=1``.
Steps/s is timed between the log lines of step ``--warmup`` and the last step (``main.log``
timestamps), so model loading, data preparation and the first steps are left out; samples/s is that
times the samples per step. Tokens/s counts the prompt+response tokens and the batch-local text
tokens (both without padding) of exactly the timed micro-batches, rebuilt afterwards from the run's
saved config by the stage's own batch code. Peak RSS (and peak CUDA memory on a GPU) is the stage's
figure from ``<run>/align.json``: the process's peak, model loading included.

The defaults are small so that SmolLM2 finishes a few steps on a laptop CPU: micro-batch 2 x 1,
histories of 3 items, texts of 16 tokens, prompts of at most 512 (+16 response) tokens (the tiny
LM's tokenizer, trained on the world's texts, needs 340 tokens for the English template alone;
SmolLM2's needs ~110 and its prompts come to ~370 with 3-item histories). ``model/llm=smollm2_135m`` needs a local
model directory (``--smollm2-dir``, default ``outputs/assets/smollm2-135m``, made by
``lsvcr-assets fetch smollm2-135m``); it is skipped with a message when missing. On the CPU it
runs in float32 without gradient checkpointing (``--smollm2-dtype``; bfloat16 is about 2x slower on
CPUs without native bf16), on a GPU in bfloat16 with gradient checkpointing and ``--hardware``'s
precision.

The machine's load average is printed first: on a shared machine, repeat runs when it is high.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^\[(?P<ts>[\d-]+ [\d:,]+)\]\[lsvcr\]\[INFO\] - step (?P<step>\d+)/(?P<total>\d+):")


def step_times(log_text: str) -> dict[int, float]:
    """``{step: unix time}`` of the stage's ``step k/N:`` log lines."""
    out = {}
    for line in log_text.splitlines():
        m = STEP_LINE.match(line)
        if m:
            out[int(m["step"])] = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return out


def overrides(args, model: str) -> list[str]:
    o = [
        "stage=align", "prompts=en", f"hardware={args.hardware}", f"model/llm={model}",
        f"align.micro_batch_size={args.micro_batch}", f"align.grad_accum={args.grad_accum}",
        f"align.max_steps={args.warmup + args.steps}", "align.log_every=1", "align.save_every=null",
        f"align.max_prompt_tokens={args.prompt_tokens}", f"align.max_response_tokens={args.response_tokens}",
        f"data.max_phis_len={args.history}", f"data.max_chis_len={args.history}",
        f"embed.max_length={args.text_tokens}",
    ]
    if model == "smollm2_135m":
        dtype = args.smollm2_dtype or ("bfloat16" if args.hardware != "cpu" else "float32")
        o += [f"model.llm.name_or_path={Path(args.smollm2_dir).resolve()}", f"model.llm.dtype={dtype}",
              f"model.llm.gradient_checkpointing={str(args.hardware != 'cpu').lower()}"]
    return o + list(args.extra)


def run_stage(args, model: str, run_dir: Path) -> dict:
    """One ``stage=align`` run; its summary, step times and wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=f"{REPO}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "lsvcr.main", *overrides(args, model), f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print((done.stdout + done.stderr)[-3000:], file=sys.stderr)
        raise SystemExit(f"stage=align with model/llm={model} failed (exit code {done.returncode})")
    summary = json.loads((run_dir / "align.json").read_text())
    return {"summary": summary, "times": step_times((run_dir / "main.log").read_text()), "wall": wall}


def timed_tokens(run_dir: Path, warmup: int, steps: int) -> tuple[int, int]:
    """Prompt+response and text tokens (no padding) of the timed micro-batches, rebuilt with the
    stage's batch code from the run's saved config and tokenizer."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from lsvcr.data.align_batch import AlignSamples
    from lsvcr.pipelines.align import AlignEpoch, Plan, _collator, _tasks
    from lsvcr.pipelines.common import load_dataset

    ckpt = run_dir / "align"
    cfg = OmegaConf.load(ckpt / "config.yaml")
    plan = Plan(**json.loads((run_dir / "align.json").read_text())["plan"])
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer", padding_side=cfg.model.llm.padding_side)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = load_dataset(cfg)
    epoch = AlignEpoch(AlignSamples(ds, _tasks(cfg)).items, _collator(cfg, ds, tokenizer), plan, 0, int(cfg.seed), 0)
    prompt = text = 0
    for b in range(warmup * plan.grad_accum, (warmup + steps) * plan.grad_accum):
        batch = epoch[b]
        prompt += int(batch.attention_mask.sum())
        text += int(batch.item_mask.sum())
    return prompt, text


def report(model: str, args, r: dict, tokens: tuple[int, int] | None, note: str = "") -> None:
    s, times = r["summary"], r["times"]
    first, last = args.warmup, args.warmup + args.steps
    seconds = times[last] - times[first]
    steps_s = args.steps / seconds
    per_step = s["plan"]["micro_batch_size"] * s["plan"]["grad_accum"] * s["plan"]["world"]
    line = (f"align {model}: {steps_s:.3f} steps/s, {steps_s * per_step:.2f} samples/s ({args.steps} steps of "
            f"{per_step} samples in {seconds:.1f}s after {args.warmup} warm-up")
    if tokens is not None:
        line += f"; {sum(tokens) / seconds:.0f} tokens/s: {tokens[0]} prompt+response + {tokens[1]} text tokens"
    line += f"); peak RSS {s['peak_rss_mb']:.0f} MB"
    if s.get("peak_cuda_mb") is not None:
        line += f", peak CUDA {s['peak_cuda_mb']:.0f} MB"
    line += f"; whole run {r['wall']:.0f}s, final loss {s['final']['loss']:.4f}{note}"
    print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2_135m"], choices=["tiny", "smollm2_135m"])
    ap.add_argument("--smollm2-dir", default=str(REPO / "outputs" / "assets" / "smollm2-135m"))
    ap.add_argument("--smollm2-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: float32 on the CPU, bfloat16 otherwise")
    ap.add_argument("--hardware", default="cpu", help="a conf/hardware entry (cpu, gpu, ...)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (at least 1)")
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=512, help="align.max_prompt_tokens")
    ap.add_argument("--response-tokens", type=int, default=16, help="align.max_response_tokens")
    ap.add_argument("--history", type=int, default=3, help="data.max_phis_len and data.max_chis_len")
    ap.add_argument("--text-tokens", type=int, default=16, help="embed.max_length: tokens per history text")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--no-tokens", action="store_true", help="skip rebuilding the timed batches to count tokens")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1 (steps are timed from the warm-up's last log line)")
    sys.path.insert(0, str(REPO))  # count tokens with this checkout's lsvcr, whatever copy is installed
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench_align_"))
    for model in args.models:
        if model == "smollm2_135m" and not (Path(args.smollm2_dir) / "config.json").is_file():
            print(f"align {model}: skipped, no model directory at {args.smollm2_dir} (make it with "
                  "`lsvcr-assets fetch smollm2-135m`, or pass --smollm2-dir)", flush=True)
            continue
        run_dir = root / model
        r = run_stage(args, model, run_dir)
        tokens, note = None, ""
        if not args.no_tokens:
            try:
                tokens = timed_tokens(run_dir, args.warmup, args.steps)
            except (ImportError, AttributeError, TypeError, KeyError, OSError) as e:
                # the stage's batch internals moved: the timing still stands
                note = f"; tokens/s n/a ({type(e).__name__}: {e})"
        report(model, args, r, tokens, note)
    if args.keep:
        print(f"run directories under {root}", flush=True)
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
