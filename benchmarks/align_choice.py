"""Which crop of a detected face suits ``fer2013_resnet_s`` best: ``--align fer2013`` vs ``box`` (margins).

    .venv/bin/python benchmarks/align_choice.py

Scenes of ``face_scenes.py`` built from PublicTest faces 1000+ (500 scenes, seed 1); MTCNN detections are
computed once and shared; ten-crop accuracy over all faces (a missed face counts as wrong). Prints one
line per variant.
"""
import sys, numpy as np
sys.path.insert(0, "benchmarks")
from face_scenes import make_scenes, match
from fer_jax import pretrained
from fer_jax.detect import MTCNN
from fer_jax.predict import faces as F
from fer_jax.predict.sources import Frame
from tfds_builders.fer2013 import fer2013_dataset_builder as fb
t = fb.read_fer2013_csv("../shared/data/fer2013/fer2013.csv.gz")["PublicTest"]
scenes = make_scenes(t.images[1000:, ..., 0], t.labels[1000:], 500, seed=1)
p = pretrained.load("fer2013_resnet_s"); det = MTCNN()
frames = [Frame(f"s{i}", None, None, s.image) for i, s in enumerate(scenes)]
dets = [det.detect(f.image) for f in frames]
class Cached:
  def __init__(self): self.i = 0
  def detect(self, im):
    d = dets[self.i]; self.i += 1; return d
for align, margin in (("fer2013", None), ("box", 0.0), ("box", -0.05)):
  if margin is not None: F.BOX_MARGIN = margin
  out = list(F.faces_in_frames(frames, detector=Cached(), align=align))
  crops = np.stack([c.crop for _, cs in out for c in cs])
  preds = p.predict(crops, test_crops="ten")
  k = n = correct = 0
  for s, (_, cs) in zip(scenes, out):
    a = match(s.boxes, np.array([c.box for c in cs]).reshape(-1, 4), [c.score for c in cs])
    for j, y in zip(a, s.labels):
      n += 1
      if j >= 0: correct += int(preds[k + j] == y)
    k += len(cs)
  print(align, margin, "acc all faces", round(correct / n, 4), n, flush=True)
