"""One-vs-one voting of the K (K - 1) / 2 pair models back to K classes.

Each pair model (i, j) scores every test image and gives a margin ``m = score_j - score_i`` (the two-class
logit difference, or the cosine difference of an ArcFace head). It votes for ``j`` when ``m > 0``, else for
``i`` (an exact 0 goes to ``i``). The predicted class has the most votes; a tie between classes with equal
votes is broken by the summed margins in favour of each class, ``S_c = sum over pairs (i, c) of m - sum over
pairs (c, j) of m`` (the class the pair models prefer more strongly wins), and a remaining tie by the lower
class id. This is the max-wins rule of one-vs-one classifiers (Hastie & Tibshirani 1998, "Classification by
pairwise coupling"; Friedman 1996), with the paper's summed-margin tie-break (PAPERS.md section 2).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from fer_jax.pairwise.pairs import Pair


def _check(margins: np.ndarray, pairs: Sequence[Pair], num_classes: int) -> np.ndarray:
  m = np.asarray(margins, np.float64)
  if m.ndim != 2 or m.shape[1] != len(pairs):
    raise ValueError(f"margins has shape {m.shape}; expected (num_images, {len(pairs)}) (a column per pair)")
  for i, j in pairs:
    if not 0 <= i < j < num_classes:
      raise ValueError(f"pair ({i}, {j}) is not 0 <= i < j < {num_classes}")
  if len(set(map(tuple, pairs))) != len(pairs):
    raise ValueError(f"pairs {list(pairs)} hold a duplicate")
  bad = ~np.isfinite(m)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(f"margin of pair {pairs[col][0]}-{pairs[col][1]} for image {row} is {m[row, col]}; "
                     "expected finite margins")
  return m


def vote_counts(margins: np.ndarray, pairs: Sequence[Pair], num_classes: int) -> Dict[str, np.ndarray]:
  """Votes (N, K) int64 and summed margins in favour of each class (N, K) float64."""
  m = _check(margins, pairs, num_classes)
  votes = np.zeros((m.shape[0], num_classes), np.int64)
  sums = np.zeros((m.shape[0], num_classes), np.float64)
  for col, (i, j) in enumerate(pairs):
    to_j = m[:, col] > 0
    votes[:, j] += to_j
    votes[:, i] += ~to_j
    sums[:, j] += m[:, col]
    sums[:, i] -= m[:, col]
  return {"votes": votes, "margin_sums": sums}


def ovo_predict(margins: np.ndarray, pairs: Sequence[Pair], num_classes: int) -> np.ndarray:
  """(N, P) pair margins -> (N,) int64 predicted classes (most votes; ties: summed margins, then lower id)."""
  counts = vote_counts(margins, pairs, num_classes)
  votes, sums = counts["votes"], counts["margin_sums"]
  # Lexicographic argmax over (votes, margin sum): among the classes with the most votes, the largest sum.
  tied = votes == votes.max(axis=1, keepdims=True)
  keyed = np.where(tied, sums, -np.inf)
  return np.argmax(keyed, axis=1).astype(np.int64)  # argmax: first (lowest) id among equal sums
