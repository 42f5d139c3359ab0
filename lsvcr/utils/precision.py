"""``hardware.precision``: its values, and what each launcher calls them (no torch import: the
dispatcher in :mod:`lsvcr.launch` reads it before any rank starts)."""

PRECISIONS = ("fp32", "bf16", "fp16")

#: ``hardware.precision`` -> Accelerate's ``mixed_precision`` (``accelerate launch`` in
#: :mod:`lsvcr.launch`, and :func:`lsvcr.distributed.accelerator` in the ranks)
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
