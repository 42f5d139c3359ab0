"""The official code's embedding tables as the dataset's text tables (``data=official``, ``data.embeddings``).

``photo_embs.npy`` and ``comment_embs.npy`` (``data.photo_emb_file`` / ``data.comment_emb_file``)
are float arrays whose row i belongs to entry i of ``all_photos.pkl`` / ``all_comments.pkl``, row
0 to the padding entry, as the official ``photo_title_emb.py`` and ``merge_comment_emb.py`` write
them. They are read with ``allow_pickle=False`` (an object array is refused, never unpickled) and
memory-mapped; the reader checks their shapes, and when the dataset is written their rows are
reordered to the prepared indices (items the reader or validation dropped lose their rows) into
``<prepared dataset>/embeddings/imported/{videos,comments}.npy`` with an ``embed_manifest.json``:
the layout ``stage=embed`` writes, which ``stage=finetune`` and ``stage=evaluate`` then read
instead of encoding texts (:func:`lsvcr.models.llm.table_cache.ensure_tables`). A NaN or Inf row is an
error naming the file, row and id (it is not zeroed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.table_files import write_tables_manifest
from lsvcr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: where the tables go, relative to the prepared dataset (the manifest's ``text_tables.dir``)
IMPORTED_DIR = "embeddings/imported"
_STEMS = {"video": "videos", "comment": "comments"}  # the file names of stage=embed's tables
_PICKLES = {"video": "all_photos.pkl", "comment": "all_comments.pkl"}
_CHUNK = 65536


def load_table(path: Path, rows: int, ids_file: Path) -> np.ndarray:
    """``path`` memory-mapped, checked to be a 2-D float array with ``rows`` rows (one per entry
    of ``ids_file``, padding included); raises :class:`DataError` naming the file otherwise."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # an object array or a pickle: numpy refuses both without allow_pickle
        raise DataError(f"{path}: not a numeric .npy array ({e}); embedding tables are plain float arrays, "
                        "pickled objects are refused") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise DataError(f"{path}: an .npz archive, expected one .npy array")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: shape {arr.shape} {arr.dtype}, expected a 2-D float array of shape "
                        f"({rows}, width): one row per entry of {ids_file.name}")
    if arr.shape[0] != rows:
        raise DataError(f"{path}: shape {arr.shape}, expected ({rows}, {arr.shape[1]}): one row per entry of "
                        f"{ids_file} ({rows - 1} ids and the padding entry 0)")
    return arr


def read_official_tables(root: Path, mode: bool | str, photo_file: str, comment_file: str,
                         photo_ids: list[str], comment_ids: list[str]) -> "OfficialTables | None":
    """The tables to import under ``data.embeddings=mode`` (``auto``: when both files exist), or None.

    ``photo_ids`` / ``comment_ids``: the pickles' ids without the padding entry (row i+1 = id i).
    """
    if not (isinstance(mode, bool) or mode == "auto"):
        raise ConfigError(f"data.embeddings={mode!r}: expected auto (import {photo_file} and {comment_file} "
                          "when both exist), true or false")
    files = {"video": root / photo_file, "comment": root / comment_file}
    found = [p for p in files.values() if p.exists()]
    if mode is False or (mode == "auto" and not found):
        return None
    shown = "true" if mode is True else mode
    for path in files.values():
        if not path.exists():
            also = f"; {found[0].name} is there" if found else ""
            raise DataError(f"{path}: not found (data.embeddings={shown}{also}); the text tables need both "
                            f"{photo_file} and {comment_file} (data.photo_emb_file, data.comment_emb_file): add "
                            "it, or set data.embeddings=false to make the tables with stage=embed")
    ids = {"video": photo_ids, "comment": comment_ids}
    arrays = {k: load_table(p, len(ids[k]) + 1, root / _PICKLES[k]) for k, p in files.items()}
    if arrays["video"].shape[1] != arrays["comment"].shape[1]:
        raise DataError(f"{files['comment']}: shape {arrays['comment'].shape}, but {files['video']} has shape "
                        f"{arrays['video'].shape}: both tables must have one width (llm_emb_size)")
    log.info("%s %s, %s %s: imported as the text tables (data.embeddings)", files["video"], arrays["video"].shape,
             files["comment"], arrays["comment"].shape)
    return OfficialTables(files, {k: pa.array(v, pa.string()) for k, v in ids.items()}, int(arrays["video"].shape[1]))


class OfficialTables:
    """Embedding tables in pickle order, written in prepared-index order by :meth:`write` (a
    :class:`~lsvcr.data.raw.GivenTables`)."""

    def __init__(self, files: dict[str, Path], ids: dict[str, pa.Array], dim: int):
        self.files, self.ids, self.dim = files, ids, dim

    def write(self, raw, root: Path) -> dict:
        out = root / IMPORTED_DIR
        out.mkdir(parents=True)
        prepared = {"video": raw.videos["video_id"], "comment": raw.comments["comment_id"]}
        paths, info = {}, {}
        for key, stem in _STEMS.items():
            idx = pc.index_in(prepared[key].cast(pa.string()), value_set=self.ids[key])
            if idx.null_count:  # the reader's items all come from the pickles
                raise DataError(f"{self.files[key]}: {idx.null_count} prepared {key}s have no row")
            rows = idx.to_numpy(zero_copy_only=False).astype(np.int64) + 1
            paths[key] = out / f"{stem}.npy"
            self._copy(key, rows, paths[key])
            info[key] = {"file": str(self.files[key]), "rows": len(self.ids[key]) + 1, "kept": len(rows),
                         "reordered": not np.array_equal(rows, np.arange(1, len(rows) + 1))}
        names = f"{self.files['video'].name} + {self.files['comment'].name}"
        write_tables_manifest(out, model_name=f"imported ({names})", checkpoint=None, max_length=0, tables=paths,
                              extra={"imported": info, "out_dim": self.dim, "max_length": None})  # no tokenizer
        return {"dir": IMPORTED_DIR, "dim": self.dim, **info}

    def _copy(self, key: str, rows: np.ndarray, out: Path) -> None:
        """Rows ``rows`` of the table into ``out`` as float32, after the zero padding row."""
        path = self.files[key]
        src = np.load(path, mmap_mode="r", allow_pickle=False)
        dst = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(rows) + 1, src.shape[1]))
        dst[0] = 0
        for start in range(0, len(rows), _CHUNK):
            take = rows[start:start + _CHUNK]
            block = np.asarray(src[take], dtype=np.float32)
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if len(bad):
                row = int(take[bad[0]])
                raise DataError(f"{path}: row {row} ({_PICKLES[key]} id {self.ids[key][row - 1].as_py()!r}) holds NaN "
                                "or Inf (as float32); the table is broken, make it again")
            dst[start + 1:start + 1 + len(take)] = block
        dst.flush()
        del dst
