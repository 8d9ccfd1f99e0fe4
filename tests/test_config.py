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


def test_parse_arg_accepts_typed_dicts_for_derived_configs():
  a = config_utils.parse_arg({"res": 112, "runlocal": True}, res=48, runlocal=False)
  assert (a.res, a.runlocal) == (112, True)
  with pytest.raises(ValueError, match="Unknown config option 'rez'"):
    config_utils.parse_arg({"rez": 1}, res=48)


def test_steps_and_epochs_contradict():
  with pytest.raises(ValueError, match="steps=5 and epochs=2.0 contradict"):
    config_utils.load_config_file(str(ROOT / "experiments/convnext_fer2013.py") + ":steps=5,epochs=2")


def test_runlocal_is_the_same_few_steps_everywhere():
  for spec in ("convnext_synthetic.py:runlocal", "convnext_fer2013.py:runlocal", "emonext_fer2013.py:runlocal",
               "au_synthetic.py:runlocal"):
    c = config_utils.load_config_file(str(ROOT / "experiments" / spec))
    assert (c.num_train_steps, c.num_epochs, c.input.batch_size) == (config_utils.RUNLOCAL_STEPS, 0.0,
                                                                      config_utils.RUNLOCAL_BATCH), spec
    assert all(e.every_steps == 0 and e.split.endswith(f"[:{4 * config_utils.RUNLOCAL_BATCH}]")
               for e in c.evals.values()), spec


def test_apply_overrides_types_like_absl_config_flags():
  c = config_utils.base_config()
  c.dataset.classes = (1, 2)
  config_utils.apply_overrides(c, [
      "--config.optimizer.lr=3e-4", "--config.dataset.manual_dir=~/data/affectnet", "--config.input.hflip=false",
      "--config.num_train_steps=12", "--config.input.mean=(0.5, 0.5, 0.5)", "--config.dataset.name=1",
      "--config.dataset.classes=(3, 4)", "--workdir=x", "--config.optimizer.frozen=^backbone/"])
  assert c.optimizer.lr == 3e-4 and c.dataset.manual_dir == "~/data/affectnet" and c.input.hflip is False
  assert c.num_train_steps == 12 and c.input.mean == (0.5, 0.5, 0.5) and c.dataset.name == "1"
  assert c.dataset.classes == (3, 4) and c.optimizer.frozen == "^backbone/"


@pytest.mark.parametrize("arg,match", [
    ("--config.optimizer.lrr=1", r"no field 'optimizer.lrr' \(did you mean 'optimizer.lr'\?\)"),
    ("--config.num_train_steps=ten", r"--config.num_train_steps=ten: 'ten' is not a Python literal"),
    ("--config.input.hflip=maybe", r"expected a boolean"),
    ("--config.num_train_steps=1.5", r"--config.num_train_steps=1.5: .*"),
    ("--config.optimizer.lr", r"--config.optimizer.lr: expected --config.FIELD=VALUE"),
])
def test_apply_overrides_errors_name_the_flag(arg, match):
  with pytest.raises(ValueError, match=match):
    config_utils.apply_overrides(config_utils.base_config(), [arg])
