"""Private memory of the fine-tuning text tables in one process: the memory-mapped file (what
``Recommender`` holds since the tables left the module) against a float32 copy (what it held before).

    python experiments/table_memory.py --rows 1000000 --dim 256

Writes a ``[rows+1, dim]`` float32 table under a temporary directory, then prints the process's
``RssAnon`` (private memory; the file's pages are shared page cache, counted in ``RssFile``) after
wrapping it with ``lsvcr.models.recommender.frozen_table``, after one batch's lookup
(``--batch`` x ``--history`` rows), and after a full copy. Linux only (reads ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from lsvcr.models.recommender import frozen_table
from lsvcr.models.sr.inputs import lookup_rows


def rss_mib() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    return tuple(int(status.split(f"{key}:")[1].split()[0]) // 1024 for key in ("RssAnon", "RssFile"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--history", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "comments.npy"
        table = np.lib.format.open_memmap(path, "w+", np.float32, (args.rows + 1, args.dim))
        for lo in range(0, args.rows + 1, 1 << 16):
            table[lo:lo + (1 << 16)] = np.random.default_rng(lo).standard_normal((min(1 << 16, args.rows + 1 - lo), args.dim))
        table.flush()
        del table
        size = (args.rows + 1) * args.dim * 4 / 2**20
        anon0, file0 = rss_mib()
        mapped = frozen_table(np.load(path, mmap_mode="r"))
        anon1, _ = rss_mib()
        rows = lookup_rows(mapped, torch.randint(1, args.rows + 1, (args.batch, args.history)))
        anon2, file2 = rss_mib()
        copy = torch.from_numpy(np.array(np.load(path, mmap_mode="r"), np.float32))
        anon3, _ = rss_mib()
        print(f"table [{args.rows + 1}, {args.dim}] float32: {size:.0f} MiB")
        print("  frozen_table (memory map):".ljust(32) + f"private +{anon1 - anon0} MiB")
        print(f"  one {args.batch}x{args.history} lookup:".ljust(32) + f"private +{anon2 - anon1} MiB (the rows, "
              f"{rows.numel() * 4 / 2**20:.0f} MiB); shared file pages +{file2 - file0} MiB")
        print("  a float32 copy (before):".ljust(32) + f"private +{anon3 - anon2} MiB per process")
        del copy


if __name__ == "__main__":
    main()
