"""Every experiments/*.py in every documented option combination: it loads, its options are the ones
its docstring documents, an unknown option is named, and its model, built through the registries,
shape-checks with ``jax.eval_shape`` on the inputs its task declares."""

import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.name for p in (ROOT / "experiments").glob("*.py"))

CONVNEXT_SIZES = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")
COMBINATIONS = {
    "au_synthetic.py": ["", "runlocal", "threshold=0.2,steps=10,batch=16"]
                       + [f"size={s}" for s in ("small_custom", "atto", "femto", "pico", "nano")],
    "au_autoencoder_synthetic.py": ["", "runlocal", "size=resnet18,res=44,stage=ae,steps=10,batch=16",
                                    "size=small_custom,res=44,stage=mlp,ae=runs/au_ae.json",
                                    "size=resnet34,recon=0.5,code=pool,code_dim=128,threshold=0.2",
                                    "data=ckplus,fold=3,size=resnet18,res=64", "data=ckplus,size=small_custom,runlocal"],
    "convnext_synthetic.py": ["", "runlocal", "steps=10,batch=32"],
    "resnet_fer2013.py": ["", "runlocal", "size=fer_xs,crop=48,ten_crop=False", "size=fer_m,epochs=2,seed=3",
                          "size=resnet18_48,steps=100,batch=64,lr=0.05,wd=1e-4,smoothing=0,ema=0"],
    "convnext_fer2013.py": [f"size={s}" for s in CONVNEXT_SIZES]
                           + ["res=48", "res=48,patch=1", "ferplus", "ten_crop", "epochs=2", "steps=100",
                              "batch=64,lr=1e-3", "runlocal"],
    "emonext_fer2013.py": [f"size={s}" for s in ("tiny", "small", "base", "large", "xlarge")]
                          + [f"size={s},arch=convnext" for s in ("tiny", "xlarge")]
                          + ["reading=paper", "cpu", "cpu,arch=convnext", "cpu,res=48", "cpu,size=tiny",
                             "minutes=5,steps=100", "epochs=3,batch=32", "runlocal", "cpu,runlocal"],
    "inception_resnet_affwild.py": [f"arch={a}" for a in ("shallow", "deep", "lstm")]
                                   + [f"arch={a},data=synthetic" for a in ("shallow", "deep", "lstm")]
                                   + ["loss=ccc", "loss=mix,width=0.5", "window=6,clip_batch=4", "res=160",
                                      "steps=10", "runlocal", "data=synthetic,runlocal"],
    "inception_resnet_afewva.py": [f"arch={a},fold={k}" for a, k in (("shallow", 0), ("deep", 1), ("lstm", 4))]
                                  + ["width=0.5,loss=ccc,steps=10,clip_batch=4,window=8", "runlocal"],
    "selinet_emotic.py": ["", "runlocal", "arch=ondevice", "data=synthetic,arch=ondevice,sentiment=categories,vad",
                          "data=synthetic,steps=10,batch=16", "epochs=3,sentiment=categories"],
    "pairwise_affectnet.py": ["", "runlocal", "pair=4-5", "backbone=efficientnet_b0,pair=0-7,head=softmax",
                              "backbone=efficientnet_b2,res=224,classes=7,probe",
                              "backbone=iresnet50,sampler=undersample,easy_margin",
                              "backbone=iresnet100,pair=3-5,s=30,m=0.3",
                              "backbone=resnet_fer_s,pair=1-2,aligned,steps=100,batch=64,lr=3e-4,wd=0,seed=1"],
    "emotic_baseline.py": ["", "runlocal", "data=synthetic", "data=synthetic,size=cpu,steps=10,batch=16", "epochs=2"],
    "emotion_bank_synthetic.py": ["", "runlocal", "arch=remo", "arch=binary", "arch=binary,size=base",
                                  "emotion=contempt,size=tiny,steps=10,batch=8", "emotion=3,landmarks=17-67",
                                  "landmarks=36,39,42,45,48-67,seed=1", "data=tracked,arch=remo",
                                  "arch=binary_lstm,size=tiny"],
    "emotion_bank_ckplus.py": ["", "runlocal", "fold=9", "emotion=surprise,arch=binary,fold=3",
                               "emotion=contempt,arch=remo,size=tiny,steps=10,batch=8", "emotion=1,landmarks=17-67"],
    "pairwise_ferplus.py": ["", "runlocal", "pair=5-6", "pair=0-7,head=softmax,probe,sampler=uniform",
                            "classes=7,pair=2-6,ten_crop,steps=20,batch=32",
                            "s=30,m=0.3,easy_margin,sampler=undersample,lr=3e-4,wd=0,seed=2"],
}
# (task output, expected trailing shape)
OUTPUTS = {"classification": "logits", "affect": "valence_arousal", "action_units": "au_intensity",
           "action_units_apex": "au_intensity", "landmark_sequence": "logits", "emotic": "multilabel_logits"}


def test_every_experiment_file_has_combinations():
  assert sorted(COMBINATIONS) == EXPERIMENTS


def _load(name, arg):
  return config_utils.load_config_file(str(ROOT / "experiments" / name) + (f":{arg}" if arg else ""))


def _accepted_options(name):
  with pytest.raises(ValueError, match="Unknown config option 'zzz_not_an_option'") as e:
    _load(name, "zzz_not_an_option=1")
  return set(re.findall(r"'(\w+)'", str(e.value).split("accepted options:")[1]))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_options_are_documented(name):
  spec = importlib.util.spec_from_file_location("exp", ROOT / "experiments" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  documented = set(re.findall(r"``(\w+)``", module.__doc__))
  missing = _accepted_options(name) - documented
  assert not missing, f"{name}: options {sorted(missing)} are not in its docstring"
  # One vocabulary: no file calls a model size 'variant' or a clip count 'batch'.
  assert "variant" not in _accepted_options(name)


def _shape_check(c):
  model = trainer.create_model(c)
  task = trainer.get_task(c)
  task.bind_model(model.input_names)
  inputs = task.example_batch(model.input_names)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, train=False, **inputs))
  outputs = jax.eval_shape(lambda v: model.apply(v, train=False, **inputs), variables)
  return task, inputs, outputs, variables


@pytest.mark.parametrize("name,arg", [(n, a) for n in EXPERIMENTS for a in COMBINATIONS[n]])
def test_experiment_builds_and_shape_checks(name, arg):
  c = _load(name, arg)
  task, inputs, outputs, _ = _shape_check(c)
  key = OUTPUTS[task.name]
  out = outputs[key if key in outputs else "cosine"]  # ArcFace (cosine) heads output cosines
  if task.name == "classification":
    assert out.shape == (1, c.dataset.num_classes)
    assert c.model.head.num_outputs == c.dataset.num_classes
  elif task.name == "affect":
    assert out.shape[-1] == len(c.affect.target_keys) == 2
    frames = inputs.get("frames", inputs.get("image"))
    assert int(np.prod(out.shape[:-1])) == int(np.prod(frames.shape[:-3]))  # one output per frame
  elif task.name == "emotic":
    assert out.shape == (1, len(c.task_options.category_names)) == (1, 26)
  elif task.name == "landmark_sequence":
    k = c.task_options.positive_class
    assert out.shape == (1, 1 if k is not None else c.dataset.num_classes)
  else:
    assert out.shape == (1, len(c.au.names))
  for spec in c.evals.values():  # evaluators named by config resolve in the registry
    from fer_jax.registry import EVALUATORS
    assert spec.type in EVALUATORS
  if "runlocal" in arg:
    assert c.num_train_steps == config_utils.RUNLOCAL_STEPS


def test_cpu_keeps_an_explicit_size():
  assert _load("emonext_fer2013.py", "cpu,size=tiny").model.backbone.size == "tiny"
  assert _load("emonext_fer2013.py", "cpu").model.backbone.size == "atto"
  assert _load("emonext_fer2013.py", "").model.backbone.size == "tiny"


def test_contradictions_and_bad_values_are_named():
  with pytest.raises(ValueError, match="arch=convnext and reading=paper contradict"):
    _load("emonext_fer2013.py", "arch=convnext,reading=paper")
  with pytest.raises(ValueError, match=r"size='huge'; expected one of"):
    _load("convnext_fer2013.py", "size=huge")
  with pytest.raises(ValueError, match=r"arch='resnet'; expected one of"):
    _load("inception_resnet_affwild.py", "arch=resnet")
  with pytest.raises(ValueError, match=r"fold=7; expected 0..4"):
    _load("inception_resnet_afewva.py", "fold=7")


def test_derived_afewva_config_keeps_every_option():
  c = _load("inception_resnet_afewva.py", "arch=lstm,width=0.5,loss=ccc,steps=123,clip_batch=3,window=8")
  assert c.model.backbone.name == "inception_resnet_lstm" and c.model.backbone.width_multiplier == 0.5
  assert set(c.loss) == {"ccc"} and c.num_train_steps == 123 and c.input.batch_size == 3
  assert c.affect.window == 8 and c.dataset.name == "afew_va/aligned_112"
