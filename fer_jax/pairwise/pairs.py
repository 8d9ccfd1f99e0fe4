"""The pairs of a K-class problem (28 for AffectNet's / FER+'s 8 expressions) and their names.

A pair is ``(i, j)`` with ``0 <= i < j < K`` in the dataset's own label ids; its name is ``'i-j'`` (the form
the configs' ``pair=`` option and the sweep's ``--pairs`` take: ``,`` already separates config options).
In the pair model class ``i`` is label 0 and class ``j`` label 1 (``config.dataset.classes = (i, j)``).
"""

from __future__ import annotations

import itertools
import re
from typing import List, Sequence, Tuple

Pair = Tuple[int, int]

_PAIR_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def all_pairs(num_classes: int = 8) -> List[Pair]:
  """Every (i, j), i < j, in lexicographic order: K (K - 1) / 2 pairs."""
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes={num_classes!r}; expected an int >= 2")
  return list(itertools.combinations(range(num_classes), 2))


def pair_name(pair: Pair) -> str:
  """(3, 5) -> '3-5'."""
  i, j = pair
  return f"{int(i)}-{int(j)}"


def pair_dirname(pair: Pair) -> str:
  """The sweep's sub-work-dir of a pair: 'pair_3-5'."""
  return f"pair_{pair_name(pair)}"


def parse_pair(text: str, num_classes: int = 8) -> Pair:
  """'3-5' -> (3, 5); the two ids must differ and lie in [0, num_classes). Given as 'j-i' it is sorted."""
  m = _PAIR_RE.match(str(text))
  if not m:
    raise ValueError(f"pair={text!r}; expected 'i-j' with two class ids (e.g. '3-5')")
  i, j = int(m.group(1)), int(m.group(2))
  if i == j:
    raise ValueError(f"pair={text!r} names class {i} twice; expected two different classes")
  bad = [k for k in (i, j) if k >= num_classes]
  if bad:
    raise ValueError(f"pair={text!r}: class {bad[0]} is out of range; expected ids in 0..{num_classes - 1} "
                     f"({num_classes} classes)")
  return (min(i, j), max(i, j))


def parse_pairs(text: str, num_classes: int = 8) -> List[Pair]:
  """'0-1,3-5' -> [(0, 1), (3, 5)] (order kept, duplicates dropped); '' or 'all' -> every pair."""
  if not text or text.strip() == "all":
    return all_pairs(num_classes)
  out: List[Pair] = []
  for item in str(text).split(","):
    if item.strip():
      p = parse_pair(item, num_classes)
      if p not in out:
        out.append(p)
  if not out:
    raise ValueError(f"--pairs={text!r} names no pair; expected e.g. '0-1,3-5' or 'all'")
  return out


def pair_label(pair: Pair, class_names: Sequence[str]) -> str:
  """(3, 5), names -> 'surprise vs disgust'."""
  return f"{class_names[pair[0]]} vs {class_names[pair[1]]}"
