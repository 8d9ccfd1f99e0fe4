"""``fer-jax predict``: photos and videos -> a table of faces and their emotions.

    >>> from fer_jax.predict import predict
    >>> df = predict(["photos/", "clip.mp4"], output="faces.csv", every=2)

Modules: :mod:`~fer_jax.predict.sources` (files -> frames), :mod:`~fer_jax.predict.faces` (frames ->
detected, aligned crops), :mod:`~fer_jax.predict.tracking` (track ids across a video),
:mod:`~fer_jax.predict.classify` (crops -> probabilities), :mod:`~fer_jax.predict.writers` (the table's
columns and CSV / JSONL / Parquet writers), :mod:`~fer_jax.predict.annotate` (drawn copies of the inputs),
:mod:`~fer_jax.predict.runner` (the loop), :mod:`~fer_jax.predict.cli` (``fer-jax predict``).
"""

from __future__ import annotations

from fer_jax.predict.faces import ALIGNMENTS, FaceCrop, faces_in_frames
from fer_jax.predict.runner import Summary, predict
from fer_jax.predict.sources import Frame, InputError, discover, iter_frames
from fer_jax.predict.tracking import IouTracker, box_iou
from fer_jax.predict.writers import columns

__all__ = ["ALIGNMENTS", "FaceCrop", "Frame", "InputError", "IouTracker", "Summary", "box_iou", "columns",
           "discover", "faces_in_frames", "iter_frames", "predict"]
