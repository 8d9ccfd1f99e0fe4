"""Face detection: MTCNN (Zhang et al. 2016) in JAX / Flax with weights converted from facenet-pytorch.

    >>> from fer_jax.detect import MTCNN, Detections
    >>> d = MTCNN().detect(frame)   # uint8 (H, W, 3) RGB -> Detections(boxes, scores, landmarks)

See :mod:`fer_jax.detect.mtcnn`. Needs neither torch nor facenet-pytorch at run time.
"""

from __future__ import annotations

from fer_jax.detect.mtcnn import MTCNN, Detections, pyramid_scales
from fer_jax.detect.params import MTCNNWeightsError, load_variables

__all__ = ["MTCNN", "Detections", "MTCNNWeightsError", "load_variables", "pyramid_scales"]
