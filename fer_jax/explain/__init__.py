"""Explanations: Integrated Gradients (captum API), landmark / AU-region aggregation, heat maps.

For the explainable binary landmark network (PAPERS.md section 4): IG over landmark inputs with a
neutral-face baseline, per-landmark |IG| over x, y and frames, ranking and pruning::

  attr = integrated_gradients(fn, seqs, target=labels, baselines=neutral)   # (B, T, 68, 2)
  scores = aggregate_landmark_attributions(attr, over_axes=(0, 1))          # (68,)
  kept = prune_landmarks(scores, keep=0.5)

For face crops of a ``fer_jax.pretrained`` classifier (``fer-jax explain``, ``fer_jax.explain.cli``)::

  res = explain_faces(predictor, crops)                      # IG per pixel, targets, probs, deltas
  stats = region_stats(res.attributions, face_region_masks(landmarks, crops.shape[1:3]))
"""

from fer_jax.explain.faces import (BASELINES, OUTPUTS, REGIONS_5, REGIONS_68, FaceAttributions,
                                   explain_faces, explanation_image, face_region_masks,
                                   five_point_region_masks, landmark68_region_masks, landmarks_to_crop,
                                   make_baselines, region_stats, resolve_targets, write_explanation_png)
from fer_jax.explain.heatmap import (attribution_heatmap, draw_landmarks, overlay_heatmap,
                                     write_heatmap_png)
from fer_jax.explain.integrated_gradients import (
    CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS, INPUT_OUTPUT_GRADIENTS, METHODS,
    OUTPUT_LAYER_VALUES, approximation_parameters, integrated_gradients,
    pair_saliency_call_model_function, select_target)
from fer_jax.explain.regions import (AU_REGIONS, COARSE_GROUPS, GROUP_SETS, LANDMARK_GROUPS,
                                     aggregate_by_groups, aggregate_by_masks,
                                     aggregate_landmark_attributions, landmark_region_masks,
                                     prune_landmarks, pruning_schedule, rank_landmarks,
                                     resolve_groups, select_landmarks)

__all__ = [
    "BASELINES", "OUTPUTS", "REGIONS_5", "REGIONS_68", "FaceAttributions", "explain_faces",
    "explanation_image", "face_region_masks", "five_point_region_masks", "landmark68_region_masks",
    "landmarks_to_crop", "make_baselines", "region_stats", "resolve_targets", "write_explanation_png",
    "attribution_heatmap", "draw_landmarks", "overlay_heatmap", "write_heatmap_png",
    "CONVOLUTION_LAYER_VALUES", "CONVOLUTION_OUTPUT_GRADIENTS", "INPUT_OUTPUT_GRADIENTS",
    "METHODS", "OUTPUT_LAYER_VALUES", "approximation_parameters", "integrated_gradients",
    "pair_saliency_call_model_function", "select_target",
    "AU_REGIONS", "COARSE_GROUPS", "GROUP_SETS", "LANDMARK_GROUPS", "aggregate_by_groups",
    "aggregate_by_masks", "aggregate_landmark_attributions", "landmark_region_masks",
    "prune_landmarks", "pruning_schedule", "rank_landmarks", "resolve_groups", "select_landmarks",
]
