"""One-off conversion of facenet-pytorch 2.6.0's MTCNN weights to the Flax msgpack shipped here.

    .venv/bin/python -m fer_jax.detect.convert_mtcnn [--src DIR] [--out DIR]

reads ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (state dicts; ``torch.load(weights_only=True)``,
nothing is unpickled) and writes ``mtcnn.msgpack`` (``flax.serialization.msgpack_serialize`` of
``{'pnet': {'params': ...}, 'rnet': ..., 'onet': ...}`` for :mod:`fer_jax.detect.nets`), ``mtcnn.json``
(its SHA-256 and provenance) and ``LICENSE-facenet-pytorch.txt`` (MIT) into ``fer_jax/detect/weights/``.
Mapping: conv OIHW -> HWIO, linear (out, in) -> kernel (in, out), PReLU ``weight`` -> ``alpha``; R/O-Net's
flatten order is kept by the networks themselves (:func:`fer_jax.detect.nets._flatten_whc`), so the dense
kernels are the transposed torch weights unchanged. Needs torch; the detector at run time does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any, Dict, Mapping

import numpy as np

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
NETS = ("pnet", "rnet", "onet")
SOURCE = ("facenet-pytorch 2.6.0 (https://github.com/timesler/facenet-pytorch), "
          "facenet_pytorch/data/{pnet,rnet,onet}.pt; MIT licence, Copyright (c) 2019 Timothy Esler; "
          "the weights were ported by facenet-pytorch from davidsandberg/facenet's MTCNN (Zhang et al. 2016)")

MIT_LICENSE = """MIT License

Copyright (c) 2019 Timothy Esler

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def state_dict_to_params(state_dict: Mapping[str, Any]) -> Dict[str, Dict[str, np.ndarray]]:
  """A facenet-pytorch PNet / RNet / ONet state dict -> the Flax ``params`` of the matching net."""
  params: Dict[str, Dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    a = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
    layer, kind = key.rsplit(".", 1)
    if layer.startswith("prelu"):
      if kind != "weight" or a.ndim != 1:
        raise ValueError(f"unexpected PReLU entry {key!r} of shape {a.shape}")
      params[layer] = {"alpha": a}
    elif kind == "bias":
      params.setdefault(layer, {})["bias"] = a
    elif kind == "weight" and a.ndim == 4:
      params.setdefault(layer, {})["kernel"] = np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    elif kind == "weight" and a.ndim == 2:
      params.setdefault(layer, {})["kernel"] = np.ascontiguousarray(a.T)
    else:
      raise ValueError(f"unexpected state-dict entry {key!r} of shape {a.shape}")
  return params


def default_source_dir() -> str:
  """facenet_pytorch's ``data`` folder, found without importing it (its import needs torchvision)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec("facenet_pytorch")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("facenet_pytorch is not installed; pass --src DIR with pnet.pt, rnet.pt, onet.pt")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def convert(src_dir: str) -> Dict[str, Dict[str, Any]]:
  """``{'pnet': {'params': ...}, 'rnet': ..., 'onet': ...}`` from the three ``.pt`` files in ``src_dir``."""
  import torch  # pylint: disable=import-outside-toplevel
  out = {}
  for net in NETS:
    sd = torch.load(os.path.join(src_dir, f"{net}.pt"), map_location="cpu", weights_only=True)
    out[net] = {"params": state_dict_to_params(sd)}
  return out


def write(variables: Mapping[str, Any], out_dir: str = WEIGHTS_DIR) -> str:
  """Writes ``mtcnn.msgpack``, ``mtcnn.json`` and the licence into ``out_dir``; returns the SHA-256."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  blob = serialization.msgpack_serialize(dict(variables))
  sha = hashlib.sha256(blob).hexdigest()
  with open(os.path.join(out_dir, "mtcnn.msgpack"), "wb") as f:
    f.write(blob)
  shapes = {net: {f"{layer}.{k}": list(np.shape(v)) for layer, d in variables[net]["params"].items()
                  for k, v in d.items()} for net in NETS}
  meta = {"format_version": 1, "file": "mtcnn.msgpack", "sha256": sha, "source": SOURCE,
          "licence": "LICENSE-facenet-pytorch.txt", "converter": "python -m fer_jax.detect.convert_mtcnn",
          "shapes": shapes}
  with open(os.path.join(out_dir, "mtcnn.json"), "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")
  with open(os.path.join(out_dir, "LICENSE-facenet-pytorch.txt"), "w") as f:
    f.write(MIT_LICENSE)
  return sha


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--src", default=None, help="folder with pnet.pt, rnet.pt, onet.pt (default: facenet_pytorch's)")
  ap.add_argument("--out", default=WEIGHTS_DIR)
  args = ap.parse_args(argv)
  sha = write(convert(args.src or default_source_dir()), args.out)
  print(f"wrote {os.path.join(args.out, 'mtcnn.msgpack')} sha256={sha}")


if __name__ == "__main__":
  main()
