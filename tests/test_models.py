"""Registry-driven checks of every registered model (scenic style).

Every name in ``list_models()`` needs a row in ``EXPECTED``: its exact parameter count (checked with
``jax.eval_shape``, no compute) and where that number comes from. For the smallest variant of each
family, a real init + apply checks finite logits, eval determinism, and that train mode is random
through the 'dropout' rng only. A model registered without a row fails with a message saying what
to add.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.registry import get_model, list_models


@dataclasses.dataclass
class Spec:
  params: int  # exact parameter count of get_model(name, **count_kwargs)
  family: str
  reference: str  # where `params` comes from
  count_kwargs: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"num_classes": 1000})
  input_shape: Tuple[int, int, int] = (64, 64, 3)  # (H, W, C) for init / eval_shape
  smoke_shape: Tuple[int, int, int] = (32, 32, 3)  # (H, W, C) for the real init + apply
  smoke_kwargs: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"num_classes": 7})
  # The kwarg that sets the number of outputs (classifiers: num_classes; regressors: num_outputs).
  outputs_kwarg: str = "num_classes"
  # kwargs that make train mode stochastic (e.g. drop path); None if the family has no randomness.
  stochastic_kwargs: Optional[Dict[str, Any]] = None


_TIMM = "timm 1.0.31 create_model(name), sum(p.numel())"
# Layer scale 1.0 in the smoke test: at the default 1e-6 the blocks (and so drop path) barely move
# the logits of a freshly initialised model.
_CNX = dict(family="convnext", reference=_TIMM, stochastic_kwargs={"drop_path_rate": 0.5},
            smoke_kwargs={"num_classes": 7, "layer_scale_init_value": 1.0})



def convnext_param_count(depths, dims, num_classes, stem_patch_size=4, in_channels=3) -> int:
  """Closed form: stem conv+LN; blocks 8C^2 + 58C (dw 49C+C, LN 2C, MLP 8C^2+5C, gamma C);
  downsampling LN 2C + conv 4*C*C' + C'; head LN 2C + Dense C*K + K."""
  n = stem_patch_size ** 2 * in_channels * dims[0] + dims[0] + 2 * dims[0]
  for i, (d, c) in enumerate(zip(depths, dims)):
    if i:
      n += 2 * dims[i - 1] + 4 * dims[i - 1] * c + c
    n += d * (8 * c * c + 58 * c)
  return n + 2 * dims[-1] + dims[-1] * num_classes + num_classes


_IRN_REF = "closed form (tests/test_inception_resnet.py closed_form_params) = PyTorch reference count"
_IRN = dict(family="inception_resnet", reference=_IRN_REF, count_kwargs={},
            input_shape=(75, 75, 3), smoke_shape=(75, 75, 3),
            smoke_kwargs={"num_outputs": 7, "width_multiplier": 0.25}, outputs_kwarg="num_outputs",
            stochastic_kwargs={"dropout_rate": 0.5})
_EMX = dict(family="emonext", smoke_shape=(64, 64, 3),
            reference="closed form fer_jax.models.emonext.emonext_param_count(..., image_size=64)",
            stochastic_kwargs={"drop_path_rate": 0.5},
            smoke_kwargs={"num_classes": 7, "layer_scale_init_value": 1.0})
_EMX_CUSTOM = dict(depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), stem_patch_size=2, num_classes=8)
_SMALL_CUSTOM = dict(depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), stem_patch_size=2, num_classes=8)

# The smoke test builds B0's code at width 0.25, depth 0.2 (126k parameters: a quarter of B0's compile time).
_EFF = dict(family="efficientnet", reference=_TIMM, stochastic_kwargs={"drop_rate": 0.5, "drop_path_rate": 0.5},
            smoke_kwargs={"num_classes": 7, "size": None, "width_multiplier": 0.25, "depth_multiplier": 0.2})
_MNV3 = dict(family="mobilenetv3", reference=_TIMM, stochastic_kwargs={"drop_rate": 0.5, "drop_path_rate": 0.5},
             smoke_kwargs={"num_classes": 7, "size": None, "layout": "small", "width_multiplier": 0.25})
_RX = dict(family="resnext", reference=_TIMM, smoke_kwargs={"num_classes": 7})
_RX_CUSTOM = dict(block="bottleneck", depths=(1, 1, 2, 1), widths=(16, 32, 64, 128), groups=8, base_width=16,
                  num_classes=8)

EXPECTED: Dict[str, Spec] = {
    "convnext": Spec(convnext_param_count(**_SMALL_CUSTOM), family="convnext",
                     reference="closed form (convnext_param_count)",
                     count_kwargs=_SMALL_CUSTOM, stochastic_kwargs={"drop_path_rate": 0.5},
                     smoke_kwargs={**_SMALL_CUSTOM, "layer_scale_init_value": 1.0}),
    "convnext_atto": Spec(3_695_520, **_CNX),
    "convnext_femto": Spec(5_217_784, **_CNX),
    "convnext_pico": Spec(9_045_672, **_CNX),
    "convnext_nano": Spec(15_593_560, **_CNX),
    "convnext_tiny": Spec(28_589_128, **_CNX),
    "convnext_small": Spec(50_223_688, **_CNX),
    "convnext_base": Spec(88_591_464, **_CNX),
    "convnext_large": Spec(197_767_336, **_CNX),
    "convnext_xlarge": Spec(350_196_968, **_CNX),
    "emonext": Spec(1_328_556, family="emonext", reference="closed form (emonext_param_count, 32 px)",
                    input_shape=(32, 32, 3), count_kwargs=_EMX_CUSTOM,
                    stochastic_kwargs={"drop_path_rate": 0.5},
                    smoke_kwargs={**_EMX_CUSTOM, "layer_scale_init_value": 1.0}),
    "emonext_atto": Spec(3_967_940, **_EMX),
    "emonext_femto": Spec(5_587_964, **_EMX),
    "emonext_pico": Spec(9_664_556, **_EMX),
    "emonext_nano": Spec(16_532_060, **_EMX),
    "emonext_tiny": Spec(29_918_156, **_EMX),
    "emonext_small": Spec(51_552_716, **_EMX),
    "emonext_base": Spec(90_914_284, **_EMX),
    "emonext_large": Spec(202_928_684, **_EMX),
    "emonext_xlarge": Spec(359_331_436, **_EMX),
    "inception_resnet_shallow": Spec(8_043_650, **_IRN),
    "inception_resnet_deep": Spec(20_966_914, **_IRN),
    # (T, H, W, C): the LSTM model takes clips.
    "inception_resnet_lstm": Spec(12_761_730, **{**_IRN, "input_shape": (2, 75, 75, 3)}),
    "efficientnet_b0": Spec(5_288_548, **_EFF),
    "efficientnet_b1": Spec(7_794_184, **_EFF),
    "efficientnet_b2": Spec(9_109_994, **_EFF),
    "efficientnet_b3": Spec(12_233_232, **_EFF),
    "efficientnet_b4": Spec(19_341_616, **_EFF),
    "efficientnet_b5": Spec(30_389_784, **_EFF),
    "efficientnet_b6": Spec(43_040_704, **_EFF),
    "efficientnet_b7": Spec(66_347_960, **_EFF),
    "mobilenetv3_large_075": Spec(3_993_528, **_MNV3),
    "mobilenetv3_large_100": Spec(5_483_032, **_MNV3),
    "mobilenetv3_small_050": Spec(1_593_224, **_MNV3),
    "mobilenetv3_small_075": Spec(2_041_872, **_MNV3),
    "mobilenetv3_small_100": Spec(2_542_856, **_MNV3),
    "resnet18": Spec(11_689_512, **_RX),
    "resnet34": Spec(21_797_672, **_RX),
    "resnet50": Spec(25_557_032, **_RX),
    "resnet101": Spec(44_549_160, **_RX),
    "resnext50_32x4d": Spec(25_028_904, **_RX),
    "resnext101_32x8d": Spec(88_791_336, **_RX),
    "resnext101_64x4d": Spec(83_455_272, **_RX),
    "wide_resnet50_2": Spec(68_883_240, **_RX),
    "resnext": Spec(636_360, family="resnext", count_kwargs=_RX_CUSTOM, smoke_kwargs={**_RX_CUSTOM, "num_classes": 7},
                    reference="timm ResNet(Bottleneck, [1, 1, 2, 1], cardinality=8, base_width=16, "
                              "channels=(16, 32, 64, 128), num_classes=8), sum(p.numel())"),
}

REGISTERED = list_models()


def test_closed_form_agrees_with_timm_counts():
  assert convnext_param_count((2, 2, 6, 2), (40, 80, 160, 320), 1000) == EXPECTED["convnext_atto"].params
  assert convnext_param_count((3, 3, 27, 3), (256, 512, 1024, 2048), 1000) == EXPECTED[
      "convnext_xlarge"].params


def _spec(name: str) -> Spec:
  if name not in EXPECTED:
    pytest.fail(f"model {name!r} is registered but has no row in tests/test_models.py EXPECTED; "
                "add Spec(<exact param count>, family=..., reference=<where the count comes from>)")
  return EXPECTED[name]


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init_shapes(name: str, **kwargs):
  spec = _spec(name)
  model = get_model(name, **kwargs)
  x = jnp.zeros((1, *spec.input_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                             "dropout": jax.random.key(1)}, x, train=False))


def test_registry_and_table_agree():
  missing = sorted(set(REGISTERED) - set(EXPECTED))
  stale = sorted(set(EXPECTED) - set(REGISTERED))
  assert not missing, f"registered models without a row in EXPECTED: {missing}"
  assert not stale, f"EXPECTED rows for models that are not registered: {stale}"


@pytest.mark.parametrize("name", REGISTERED)
def test_param_count(name):
  spec = _spec(name)
  shapes = _init_shapes(name, **spec.count_kwargs)
  got = _count(shapes["params"])
  assert got == spec.params, f"{name}: {got:,} params, expected {spec.params:,} ({spec.reference})"
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name", [n for n in REGISTERED if n.startswith("inception_resnet")])
def test_regressors_refuse_num_classes(name):
  """The Inception-ResNet regressors take num_outputs only (no num_classes alias)."""
  with pytest.raises(TypeError, match=rf"{name} takes num_outputs.*not num_classes=7"):
    get_model(name, num_classes=7)
  assert get_model(name, num_outputs=7).num_outputs == 7


def _smallest_per_family():
  best = {}
  for name in REGISTERED:
    if name in EXPECTED:
      s = EXPECTED[name]
      if s.family not in best or s.params < EXPECTED[best[s.family]].params:
        best[s.family] = name
  return sorted(best.values())


def _run_all(eval_model, stoch_model):
  """One jit computing eval outputs of both models and a train output of ``stoch_model``."""
  def run(variables, x, key):
    rngs = {"dropout": key}
    ev = eval_model.apply(variables, x, train=False, rngs=rngs)
    ev_s = stoch_model.apply(variables, x, train=False, rngs=rngs)
    if "batch_stats" in variables:
      tr = stoch_model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])[0]
    else:
      tr = stoch_model.apply(variables, x, train=True, rngs=rngs)
    return ev, ev_s, tr
  return jax.jit(run)


@pytest.mark.parametrize("name", _smallest_per_family())
def test_smallest_variant_init_apply(name):
  spec = _spec(name)
  n_cls = spec.smoke_kwargs.get(spec.outputs_kwarg, 7)
  x = jax.random.uniform(jax.random.key(0), (3, *spec.smoke_shape))
  model = get_model(name, **spec.smoke_kwargs)
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
  # Changing the output count changes only the head: (1000 - n) * (feature_dim + 1) params.
  n_1000 = _count(_init_shapes(name, **{**spec.smoke_kwargs, spec.outputs_kwarg: 1000})["params"])
  diff = n_1000 - _count(variables["params"])
  assert diff > 0 and diff % (1000 - n_cls) == 0, (n_1000, diff)

  stoch = get_model(name, **spec.smoke_kwargs, **(spec.stochastic_kwargs or {}))
  run = _run_all(model, stoch)
  ev1, ev_s1, tr_a = map(np.asarray, run(variables, x, jax.random.key(1)))
  ev2, ev_s2, tr_b = map(np.asarray, run(variables, x, jax.random.key(1)))
  ev3, ev_s3, tr_c = map(np.asarray, run(variables, x, jax.random.key(2)))
  assert ev1.shape == (3, n_cls) and np.all(np.isfinite(ev1)) and np.all(np.isfinite(tr_a))
  np.testing.assert_array_equal(ev1, ev3)  # eval ignores the dropout rng
  assert np.abs(ev1 - ev1[:1]).max() > 0  # different images, different logits
  np.testing.assert_array_equal(ev_s1, ev1)  # stochastic options are inactive in eval
  np.testing.assert_array_equal(ev_s3, ev1)
  np.testing.assert_array_equal(tr_a, tr_b)  # same rng, same output
  if spec.stochastic_kwargs is None:
    return
  assert np.abs(tr_a - tr_c).max() > 1e-3  # rng-dependent
  assert np.abs(tr_a - ev1).max() > 1e-3  # active in train
