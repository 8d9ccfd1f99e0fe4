"""affine_grid / grid_sample / affine_warp / SpatialTransformer vs torch.nn.functional and a torch STN.

The torch STN below is our own re-implementation of EmoNeXt's localisation net from its description
(../shared/PAPERS.md section 1), in NCHW with torch's module indices, so that its state dict has
the official key names and exercises ``stn_from_torch_state_dict`` (incl. the flatten order).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax.layers import spatial_transformer as st

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _thetas(n, seed, scale=(0.5, 1.6), shift=0.7):
  """Random affine matrices: random rotation-ish linear part and translations that leave the image."""
  rng = np.random.default_rng(seed)
  a = rng.uniform(*scale, (n, 1, 1)) * np.eye(2)[None] + rng.normal(0, 0.35, (n, 2, 2))
  b = rng.uniform(-shift, shift, (n, 2, 1))
  return np.concatenate([a, b], axis=2).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("align_corners", "padding_mode", "mode"))
def _grid_sample_vjp(x, grid, g, align_corners, padding_mode, mode="bilinear"):
  """(y, dL/dx, dL/dgrid) for L = sum(grid_sample(x, grid) * g), one compile per configuration."""
  f = functools.partial(st.grid_sample, align_corners=align_corners, padding_mode=padding_mode,
                        mode=mode)
  y, vjp = jax.vjp(f, x, grid)
  return (y, *vjp(g))


@functools.partial(jax.jit, static_argnames=("size", "align_corners", "padding_mode", "fused"))
def _warp_vjp(x, theta, g, size, align_corners, padding_mode, fused):
  """(y, dL/dx, dL/dtheta) for L = sum(warp(x, theta) * g), fused or affine_grid + grid_sample."""
  kw = dict(align_corners=align_corners, padding_mode=padding_mode)
  if fused:
    f = lambda a, t: st.affine_warp(a, t, size, **kw)
  else:
    f = lambda a, t: st.grid_sample(a, st.affine_grid(t, size, align_corners), **kw)
  y, vjp = jax.vjp(f, x, theta)
  return (y, *vjp(g))


# ---------------------------------------------------------------------------------------------
# affine_grid


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior")  # size-1 axes
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("hw", [(5, 7), (16, 16), (1, 4), (6, 1), (33, 20)])
def test_affine_grid_matches_torch(hw, align_corners):
  n = 3
  theta = _thetas(n, seed=hw[0] * 100 + hw[1])
  ours = st.affine_grid(jnp.asarray(theta), (n, *hw), align_corners=align_corners)
  ours4 = st.affine_grid(jnp.asarray(theta), (n, *hw, 5), align_corners=align_corners)
  ref = F.affine_grid(torch.from_numpy(theta), (n, 5, *hw), align_corners=align_corners).numpy()
  assert ours.shape == ref.shape == (n, *hw, 2)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ours4))


def test_affine_grid_hand_computed():
  """Identity, 3 px wide, 2 px high: x = -1, 0, 1 / -2/3, 0, 2/3; y = -1, 1 / -1/2, 1/2."""
  eye = jnp.asarray([[[1.0, 0, 0], [0, 1, 0]]])
  g = np.asarray(st.affine_grid(eye, (1, 2, 3), align_corners=True))
  np.testing.assert_allclose(g[0, 0, :, 0], [-1, 0, 1], atol=1e-7)
  np.testing.assert_allclose(g[0, :, 0, 1], [-1, 1], atol=1e-7)
  g = np.asarray(st.affine_grid(eye, (1, 2, 3), align_corners=False))
  np.testing.assert_allclose(g[0, 0, :, 0], [-2 / 3, 0, 2 / 3], atol=1e-7)
  np.testing.assert_allclose(g[0, :, 0, 1], [-0.5, 0.5], atol=1e-7)
  # A pure translation by (0.5, -0.25) shifts every point.
  tr = jnp.asarray([[[1.0, 0, 0.5], [0, 1, -0.25]]])
  g2 = np.asarray(st.affine_grid(tr, (1, 2, 3), align_corners=False))
  np.testing.assert_allclose(g2 - g, np.broadcast_to([0.5, -0.25], g.shape), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# grid_sample: values and gradients


def _sample_case(seed, n=2, hw=(9, 12), ghw=(7, 10), c=3, random_grid=False, align_corners=True):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *hw, c)).astype(np.float32)
  if random_grid:  # arbitrary (non-affine) coordinates, many outside [-1, 1]
    grid = rng.uniform(-1.4, 1.4, (n, *ghw, 2)).astype(np.float32)
  else:
    theta = _thetas(n, seed)
    grid = F.affine_grid(torch.from_numpy(theta), (n, c, *ghw), align_corners=align_corners)
    grid = grid.numpy()
  return x, grid


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_values_match_torch(align_corners, padding_mode, mode):
  for seed, random_grid in ((0, False), (1, True)):
    x, grid = _sample_case(seed, random_grid=random_grid, align_corners=align_corners)
    assert (np.abs(grid) > 1).any()  # samples outside the image
    ours, _, _ = _grid_sample_vjp(x, grid, np.zeros((2, 7, 10, 3), np.float32), align_corners,
                                  padding_mode, mode)
    ref = F.grid_sample(_nchw(x), torch.from_numpy(grid), mode=mode, padding_mode=padding_mode,
                        align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(ours), _nhwc(ref), rtol=0, atol=1e-5)


def test_grid_sample_hand_computed():
  """2x2 image [[1, 2], [3, 4]]: the centre is 2.5; a half-outside tap with zeros padding halves."""
  x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  pts = jnp.asarray([[0.0, 0.0], [1.0, -1.0], [2.0, -1.0], [0.5, 0.0]]).reshape(1, 1, 4, 2)
  ac = np.asarray(st.grid_sample(x, pts, align_corners=True)).ravel()
  # (0, 0) -> pixel (0.5, 0.5): mean 2.5; (1, -1) -> pixel (1, 0): 2; (2, -1) -> pixel (1.5, 0):
  # half of 2 (the other tap is outside); (0.5, 0) -> pixel (0.75, 0.5): 0.25*(1+3)/2 + 0.75*(2+4)/2.
  np.testing.assert_allclose(ac, [2.5, 2.0, 1.0, 0.25 * 2 + 0.75 * 3], atol=1e-6)
  bd = np.asarray(st.grid_sample(x, pts, align_corners=True, padding_mode="border")).ravel()
  np.testing.assert_allclose(bd[2], 2.0, atol=1e-6)  # clamped to pixel (1, 0)
  # align_corners=False: (-1, -1) is the outer corner, pixel (-0.5, -0.5): a quarter of x[0, 0].
  nc = np.asarray(st.grid_sample(x, jnp.asarray([[[[-1.0, -1.0]]]]), align_corners=False)).ravel()
  np.testing.assert_allclose(nc, [0.25], atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_grads_match_torch(align_corners, padding_mode):
  for seed, random_grid in ((2, False), (3, True)):
    x, grid = _sample_case(seed, random_grid=random_grid, align_corners=align_corners)
    g = np.random.default_rng(seed + 10).normal(size=(2, 7, 10, 3)).astype(np.float32)

    _, dx, dgrid = _grid_sample_vjp(x, grid, g, align_corners, padding_mode)
    tx = _nchw(x).requires_grad_(True)
    tg = torch.from_numpy(grid).requires_grad_(True)
    ty = F.grid_sample(tx, tg, padding_mode=padding_mode, align_corners=align_corners)
    (ty * _nchw(g)).sum().backward()
    np.testing.assert_allclose(np.asarray(dx), _nhwc(tx.grad), rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dgrid), tg.grad.numpy(), rtol=0, atol=1e-4)
    assert np.abs(tg.grad.numpy()).max() > 0.1  # a non-trivial comparison


def test_nearest_grads_match_torch():
  x, grid = _sample_case(4, random_grid=True)
  g = np.random.default_rng(5).normal(size=(2, 7, 10, 3)).astype(np.float32)
  _, dx, dgrid = _grid_sample_vjp(x, grid, g, False, "zeros", "nearest")
  tx = _nchw(x).requires_grad_(True)
  (F.grid_sample(tx, torch.from_numpy(grid), mode="nearest", align_corners=False)
   * _nchw(g)).sum().backward()
  np.testing.assert_allclose(np.asarray(dx), _nhwc(tx.grad), rtol=0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(dgrid), 0.0)


# ---------------------------------------------------------------------------------------------
# affine_warp (fused) == affine_grid + grid_sample, and gradients w.r.t. theta


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_affine_warp_and_theta_grads_match_torch(align_corners, padding_mode):
  """Output 8x11 from a 13x17 input (same-size warps: the STN tests below)."""
  n, hw, out_hw, c = 3, (13, 17), (8, 11), 2
  theta = _thetas(n, seed=11)
  x = np.random.default_rng(12).normal(size=(n, *hw, c)).astype(np.float32)
  g = np.random.default_rng(13).normal(size=(n, *out_hw, c)).astype(np.float32)
  kw = dict(align_corners=align_corners, padding_mode=padding_mode)
  ref = {}
  for dt in (torch.float32, torch.float64):
    tx = _nchw(x).to(dt).requires_grad_(True)
    tth = torch.from_numpy(theta).to(dt).requires_grad_(True)
    tgrid = F.affine_grid(tth, (n, c, *out_hw), align_corners=align_corners)
    ty = F.grid_sample(tx, tgrid, **kw)
    (ty * _nchw(g).to(dt)).sum().backward()
    ref[dt] = (_nhwc(ty), _nhwc(tx.grad), tth.grad.numpy())
  ty, tdx, _ = ref[torch.float32]
  tdth = ref[torch.float64][2]
  # d/dtheta sums ~H*W*C terms of size ~100 with cancellation: float32 (torch's included) is
  # ~1e-6 relative off the float64 value, so theta gradients are compared with torch in float64.
  dth_atol = 2e-6 * np.abs(tdth).max()
  assert np.abs(ref[torch.float32][2] - tdth).max() < dth_atol
  for fused in (True, False):
    y, dx, dth = _warp_vjp(x, theta, g, (n, *out_hw), fused=fused, **kw)
    np.testing.assert_allclose(np.asarray(y), ty, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), tdx, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dth), tdth, rtol=0, atol=dth_atol)


@pytest.mark.parametrize("align_corners", [True, False])
def test_affine_warp_identity_is_exact(align_corners):
  x = jax.random.uniform(jax.random.key(0), (2, 50, 37, 3))
  eye = jnp.tile(jnp.asarray(st.IDENTITY_THETA).reshape(1, 2, 3), (2, 1, 1))
  warp = jax.jit(st.affine_warp, static_argnames=("size", "align_corners", "padding_mode", "mode"))
  y = warp(x, eye, align_corners=align_corners)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  # A translation by exactly one pixel (align_corners=True: 2/(W-1) per pixel) shifts exactly.
  if align_corners:
    th = eye.at[:, 0, 2].set(2 / 36)
    y = np.asarray(warp(x, th, align_corners=True))
    np.testing.assert_allclose(y[:, :, :-1], np.asarray(x)[:, :, 1:], atol=1e-5)
    np.testing.assert_allclose(y[:, :, -1], 0.0, atol=1e-5)


def test_vmap_matches_loop():
  x, grid = _sample_case(6, n=4)
  xs, gs = jnp.asarray(x).reshape(2, 2, *x.shape[1:]), jnp.asarray(grid).reshape(2, 2, *grid.shape[1:])
  f = jax.jit(lambda a, b: st.grid_sample(a, b, align_corners=True))
  batched = jax.jit(jax.vmap(f))(xs, gs)
  looped = jnp.stack([f(xs[i], gs[i]) for i in range(2)])
  np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), atol=1e-7)


def test_bad_inputs_raise():
  x = jnp.zeros((2, 8, 8, 3))
  with pytest.raises(ValueError, match=r"theta must have shape \(N, 2, 3\).*\(2, 3, 3\)"):
    st.affine_grid(jnp.zeros((2, 3, 3)), (2, 8, 8))
  with pytest.raises(ValueError, match="size.*NHWC.*\\(2, 8\\)"):
    st.affine_grid(jnp.zeros((2, 2, 3)), (2, 8))
  with pytest.raises(ValueError, match="size\\[0\\]=3 does not match theta's batch size 2"):
    st.affine_grid(jnp.zeros((2, 2, 3)), (3, 8, 8))
  with pytest.raises(ValueError, match="padding_mode='reflection'.*'zeros', 'border'"):
    st.grid_sample(x, jnp.zeros((2, 4, 4, 2)), padding_mode="reflection")
  with pytest.raises(ValueError, match="mode='bicubic'"):
    st.grid_sample(x, jnp.zeros((2, 4, 4, 2)), mode="bicubic")
  with pytest.raises(ValueError, match=r"grid must have shape \(N, Hg, Wg, 2\).*\(1, 4, 4, 2\)"):
    st.grid_sample(x, jnp.zeros((1, 4, 4, 2)))
  with pytest.raises(ValueError, match="x must be an NHWC.*\\(8, 8, 3\\)"):
    st.grid_sample(jnp.zeros((8, 8, 3)), jnp.zeros((2, 4, 4, 2)))
  with pytest.raises(ValueError, match="12x12 px is too small"):
    st.SpatialTransformer().init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))


# ---------------------------------------------------------------------------------------------
# SpatialTransformer vs a torch STN with the official layout


class TorchSTN(torch.nn.Module):
  """EmoNeXt's STN from its description (NCHW); module indices as in the official code."""

  def __init__(self, flat):
    super().__init__()
    nn_ = torch.nn
    self.localization = nn_.Sequential(
        nn_.Conv2d(3, 8, 7), nn_.BatchNorm2d(8), nn_.MaxPool2d(2, 2), nn_.ReLU(),
        nn_.Conv2d(8, 10, 5), nn_.BatchNorm2d(10), nn_.MaxPool2d(2, 2), nn_.ReLU())
    self.fc_loc = nn_.Sequential(nn_.Linear(flat, 32), nn_.ReLU(), nn_.Linear(32, 6))
    self.flat = flat

  def forward(self, x):
    theta = self.fc_loc(self.localization(x).reshape(-1, self.flat)).view(-1, 2, 3)
    grid = F.affine_grid(theta, x.size(), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True), theta


def _smooth_images(n, size, seed):
  """Images in [0, 1] made of random plane waves (periods 8-40 px), like real photos locally smooth.

  Bilinear sampling's position derivative jumps by the image's second difference whenever a sample
  crosses a pixel; on white noise that jump is O(1), so float32-level differences in theta between
  two implementations move whole gradient terms. Smooth images keep both comparisons well posed.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  out = np.zeros((n, size, size, 3))
  for _ in range(6):
    k = 2 * np.pi / rng.uniform(8, 40, (n, 1, 1, 1))
    ang = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3))
    out += np.sin(k * (np.cos(ang) * xx[..., None] + np.sin(ang) * yy[..., None]) + phase)
  return (0.5 + out / 12).astype(np.float32)


def _torch_stn(size, seed):
  torch.manual_seed(seed)
  hl, wl = st.localization_output_hw(size, size)
  net = TorchSTN(10 * hl * wl)
  with torch.no_grad():  # non-trivial BN statistics and a theta head that depends on the input
    for bn in (net.localization[1], net.localization[5]):
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.uniform_(-0.2, 0.2)
      bn.running_mean.uniform_(-0.1, 0.1)
      bn.running_var.uniform_(0.005, 0.05)
    # Scale the theta head so that theta = identity + O(0.1) perturbations that vary with the input.
    probe = torch.rand(4, 3, size, size)
    hidden = net.fc_loc[1](net.fc_loc[0](net.localization.eval()(probe).reshape(4, -1)))
    net.fc_loc[2].weight.normal_(0, 1).mul_(0.05 / hidden.std())
    net.fc_loc[2].bias.copy_(torch.tensor([1.1, 0.15, -0.1, -0.1, 0.9, 0.05]))
  return net


@pytest.mark.parametrize("size", [224, 64])
def test_stn_matches_torch_eval(size):
  net = _torch_stn(size, seed=size).eval()
  x = _smooth_images(2, size, seed=size)
  variables = st.stn_from_torch_state_dict(net.state_dict())  # float32 weights
  assert variables["params"]["fc_loc_0"]["kernel"].shape == (10 * st.localization_output_hw(
      size, size)[0] ** 2, 32)
  y, theta = st.SpatialTransformer().apply(variables, jnp.asarray(x), return_theta=True)
  # End to end vs the torch STN run in float64 (same weights): at 224 px a theta rounding error d
  # moves samples by ~111 d px, and near the zero-padded edge the output moves by the pixel value
  # times that, so torch's own float32 run is ~7e-5 off the float64 one (ours ~2e-5).
  with torch.no_grad():
    ty, ttheta = net.double()(_nchw(x).double())
  assert np.abs(ttheta.numpy() - np.asarray(st.IDENTITY_THETA).reshape(2, 3)).max() > 0.05
  assert np.abs(ttheta[0].numpy() - ttheta[1].numpy()).max() > 1e-3  # theta depends on the input
  np.testing.assert_allclose(np.asarray(theta), ttheta.numpy(), rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y), _nhwc(ty), rtol=0, atol=1e-4)
  assert (np.asarray(y) == 0).mean() > 0.05  # part of the output samples outside the image
  # The warp alone vs torch float32 on our theta.
  grid = F.affine_grid(torch.from_numpy(np.array(theta)), (2, 3, size, size), align_corners=True)
  ty32 = F.grid_sample(_nchw(x), grid, align_corners=True)
  np.testing.assert_allclose(np.asarray(y), _nhwc(ty32), rtol=0, atol=1e-4)


def test_stn_train_mode_and_param_grads_match_torch():
  size = 64
  net = _torch_stn(size, seed=1).train()
  x = _smooth_images(3, size, seed=1)
  g = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  variables = st.stn_from_torch_state_dict(net.state_dict())
  old_var = variables["batch_stats"]["loc_bn_0"]["var"]
  m = st.SpatialTransformer()

  def loss(params):
    y, upd = m.apply({"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(x),
                     train=True, mutable=["batch_stats"])
    return jnp.sum(y * g), (y, upd)

  (_, (y, upd)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  net = net.double()  # float64 reference (see test_stn_matches_torch_eval)
  ty, _ = net(_nchw(x).double())
  (ty * _nchw(g).double()).sum().backward()
  np.testing.assert_allclose(np.asarray(y), _nhwc(ty), rtol=0, atol=1e-4)
  # theta head gradients (through the grid), the first Dense (flatten order) and the first conv.
  pairs = [(grads["fc_loc_1"]["kernel"], net.fc_loc[2].weight.grad.numpy().T),
           (grads["fc_loc_1"]["bias"], net.fc_loc[2].bias.grad.numpy()),
           (grads["fc_loc_0"]["kernel"], st.stn_from_torch_state_dict(
               {k: p.grad for k, p in net.named_parameters()} | dict(net.named_buffers())
           )["params"]["fc_loc_0"]["kernel"]),
           (grads["loc_conv_0"]["kernel"],
            net.localization[0].weight.grad.numpy().transpose(2, 3, 1, 0))]
  for ours, ref in pairs:
    err = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err
  # Running statistics: mean as torch; torch's variance uses the unbiased batch variance.
  bn = net.localization[1]
  new = upd["batch_stats"]["loc_bn_0"]
  np.testing.assert_allclose(np.asarray(new["mean"]), bn.running_mean.numpy(), atol=1e-6)
  count = 3 * (size - 6) ** 2
  unbiased = (bn.running_var.numpy() - 0.9 * old_var) / 0.1
  np.testing.assert_allclose(np.asarray(new["var"]),
                             0.9 * old_var + 0.1 * unbiased * (count - 1) / count, rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_stn_identity_at_init_and_trains(dtype):
  m = st.SpatialTransformer(dtype=dtype)
  x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3)).astype(dtype)
  v = jax.jit(m.init)(jax.random.key(1), x)
  y, theta = jax.jit(functools.partial(m.apply, return_theta=True))(v, x)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(theta), np.tile(np.reshape(st.IDENTITY_THETA, (1, 2, 3)),
                                                           (2, 1, 1)))
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(x, np.float32), rtol=0, atol=1e-6)
  # Official init: conv / dense kernels ~ N(0, 0.02^2), biases 0; the theta head starts at zero.
  k = np.asarray(v["params"]["fc_loc_0"]["kernel"])
  assert abs(k.std() - 0.02) < 0.001 and abs(k.mean()) < 0.001
  assert np.all(np.asarray(v["params"]["fc_loc_0"]["bias"]) == 0)
  assert np.all(np.asarray(v["params"]["fc_loc_1"]["kernel"]) == 0)
  if dtype == jnp.bfloat16:
    return
  # One jitted SGD step on a loss that wants a shifted image moves theta away from the identity.
  target = jnp.roll(x, 3, axis=2)

  @jax.jit
  def step(params):
    def loss(p):
      out, _ = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                       mutable=["batch_stats"])
      return jnp.mean((out - target) ** 2)
    l, grads = jax.value_and_grad(loss)(params)
    lr = 1e-2 / optax.global_norm(grads)  # a small normalised gradient step
    return l, jax.tree.map(lambda p, gr: p - lr * gr, params, grads), grads

  l0, params, grads = step(v["params"])
  assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads["fc_loc_1"]["bias"])).max() > 1e-4
  l1, _, _ = step(params)
  assert float(l1) < float(l0)


def test_converter_errors():
  net = _torch_stn(64, seed=0)
  sd = net.state_dict()
  with pytest.raises(KeyError, match="'module.localization.0.weight' not in the state dict"):
    st.stn_from_torch_state_dict(sd, prefix="module.")
  with pytest.raises(ValueError, match="loc_hw=\\(10, 10\\).*1000 features.*1440"):
    st.stn_from_torch_state_dict(sd, loc_hw=(10, 10))
  prefixed = {"module." + k: t for k, t in sd.items()}
  a = st.stn_from_torch_state_dict(prefixed, prefix="module.")
  b = st.stn_from_torch_state_dict(sd)
  jax.tree.map(np.testing.assert_array_equal, a, b)
