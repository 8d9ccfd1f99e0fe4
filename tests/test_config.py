"""Config option parsing and command-line override checking."""

import pytest

import pathlib

from fer_jax import config_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_parse_arg_types_and_bare_flags():
  a = config_utils.parse_arg("variant=tiny,res=64,runlocal,lr=3e-4", variant="atto", res=48,
                             runlocal=False, lr=1e-3)
  assert (a.variant, a.res, a.runlocal, a.lr) == ("tiny", 64, True, 3e-4)


def test_parse_arg_unknown_key_names_it():
  with pytest.raises(ValueError, match=r"Unknown config option 'varient'.*did you mean 'variant'"):
    config_utils.parse_arg("varient=tiny", variant="atto")


def test_parse_arg_bad_type_names_value():
  with pytest.raises(ValueError, match=r"res='big': expected an integer"):
    config_utils.parse_arg("res=big", res=48)


def test_check_overrides_reports_typos():
  c = config_utils.base_config()
  errors = config_utils.check_overrides(
      c, ["--config.optimizer.lr=3e-4", "--config.optimizer.lrr=1", "--config.inptu.crop=3"])
  assert len(errors) == 2
  assert "'optimizer.lrr'" in errors[0] and "did you mean 'optimizer.lr'" in errors[0]
  assert "'inptu'" in errors[1] and "'input'" in errors[1]


@pytest.mark.parametrize("spec", ["experiments/convnext_synthetic.py",
                                  "experiments/convnext_synthetic.py:runlocal",
                                  "experiments/convnext_fer2013.py:variant=tiny,res=64,ferplus"])
def test_experiment_configs_load(spec):
  c = config_utils.load_config_file(str(ROOT / spec))
  assert c.model_name.startswith("convnext")
  assert c.dataset.num_classes in (7, 8)
