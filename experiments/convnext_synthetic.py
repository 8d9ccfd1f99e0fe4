r"""The main job: a small ConvNeXt on the built-in synthetic expressions (no data needed).

    python -m fer_jax.main --config=experiments/convnext_synthetic.py --workdir=runs/synthetic

The dataset (``synthetic_expressions/grey48``: 8 FACS-prototype classes, 48x48 grey, random pose,
lighting and noise) is generated on first use. Expected: >= 90% validation accuracy in under 10 minutes
on 2 CPU cores (README, results table).

Options (after ``:``): ``runlocal`` (a 20-step smoke test), ``steps=N``.
"""

from fer_jax import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, steps=1200)
  c = config_utils.base_config()
  c.dataset.name = "synthetic_expressions/grey48"
  c.dataset.num_classes = 8
  c.dataset.test_split = "test"
  c.input.update(batch_size=64, eval_batch_size=250, resize=48, crop=44, rotation=10.0, hflip=True,
                 per_image_standardization=True)
  c.input.eval_crops = "center"
  c.model_name = "convnext"
  c.model = dict(depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), stem_patch_size=2,
                 drop_path_rate=0.0, layer_scale_init_value=1e-6, num_classes=8)
  c.optimizer.update(lr=2e-3, weight_decay=0.05)
  c.schedule.update(name="warmup_cosine", warmup_steps=100)
  c.num_train_steps = arg.steps
  c.log_every_steps = 50
  c.eval_every_steps = 400
  c.checkpoint.every_steps = 400
  if arg.runlocal:
    c.num_train_steps = 20
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint.every_steps = 10
  return c
