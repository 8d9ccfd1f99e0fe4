r"""The main job: a small ConvNeXt on the built-in synthetic expressions (no data needed).

    python -m fer_jax.main --config=experiments/convnext_synthetic.py --workdir=runs/synthetic

The dataset (``synthetic_expressions/grey48``: 8 FACS-prototype classes, 48x48 grey, random pose,
lighting and noise) is generated on first use. Expected: >= 90% validation accuracy in under 10 minutes
on 2 CPU cores (README, results table).

Options (after ``:``): ``steps``, ``batch``, ``runlocal``.
"""

from fer_jax import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, steps=1200, batch=64, runlocal=False)
  c = config_utils.base_config()
  c.dataset.name = "synthetic_expressions/grey48"
  c.dataset.num_classes = 8
  c.input.update(batch_size=arg.batch, eval_batch_size=250, resize=48, crop=44, rotation=10.0, hflip=True,
                 per_image_standardization=True, eval_crops="center")
  c.model.backbone = dict(name="convnext", depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), stem_patch_size=2,
                          drop_path_rate=0.0, layer_scale_init_value=1e-6)
  c.model.head = dict(name="linear", num_outputs=8)
  c.loss = dict(ce=dict(weight=1.0))
  c.optimizer.update(lr=2e-3, weight_decay=0.05)
  c.schedule.update(name="warmup_cosine", warmup_steps=100)
  c.num_train_steps = arg.steps
  c.log_every_steps = 50
  c.evals = config_utils.evals("classification", every_steps=400)
  c.checkpoint.every_steps = 400
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
