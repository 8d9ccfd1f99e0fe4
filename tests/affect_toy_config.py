"""Config for the affect-trainer CLI tests: ``toy_clips`` with a toy frame or sequence regressor.

Options: ``sequence`` (the LSTM toy model on 4-frame windows), ``steps=N``.
"""

from fer_jax import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, sequence=False, steps=150)
  c = config_utils.base_config()
  c.task = "affect"
  c.dataset.update(name="toy_clips", import_module="toy_clips", image_size=12)
  c.evals = config_utils.evals("affect", test=None)
  c.affect = config_utils.affect_config(video_key="video_id", mask_key="frame_mask",
                                        frame_index_key="frame_index")
  c.input.update(batch_size=16, eval_batch_size=8, resize=12, crop=12, channels=1, hflip=False,
                 num_threads=1)
  c.loss = dict(mse=dict(weight=1.0, dim_weights=(1.0, 1.0)))
  c.model.head = dict(name="tanh", num_outputs=2)
  c.optimizer.update(lr=3e-3, weight_decay=0.0)
  c.schedule.update(name="warmup_cosine", warmup_steps=10)
  c.num_train_steps = arg.steps
  c.log_every_steps = 25
  c.checkpoint.every_steps = 100
  if arg.sequence:
    c.model.backbone = dict(name="toy_sequence")
    c.affect.update(window=4, stride=1, eval_hop=1)
    c.input.batch_size = 8
  else:
    c.model.backbone = dict(name="toy_frame")
    c.affect.update(window=2)
  return c
