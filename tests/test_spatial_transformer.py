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
from fer_jax.testing import assert_within, RTOL64, to_float64, U32

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Torch comparisons run both sides in float64 (x64 on, float64 inputs / variables; torch float64).
# In float32 they differ by up to ~1e-4 (gradients, positions scaled by the image size), by amounts
# that depend on the machine's rounding. Float64's unit roundoff is 2^29 ~ 5e8 times smaller, so the
# same computations differ by ~1e-12 at most (measured: ~1e-15 relative); RTOL64 (relative to the
# largest reference magnitude) leaves a wide margin on any machine, while a real mistake (a wrong
# coordinate, weight or parameter off by 1e-3) gives >~1e-5. The STN's theta head runs in float32
# whatever the input dtype: theta and what depends on its float32 rounding get bounds derived from
# that float32 computation, in units of U32.


def _nchw(x, dtype=np.float32):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype).transpose(0, 3, 1, 2)))


def _nchw64(x):
  return _nchw(x, np.float64)


def _parity64(got, want, what=""):
  """A JAX result computed in float64 vs float64 torch: RTOL64 of the largest magnitude."""
  assert np.asarray(got).dtype == np.float64, (what, np.asarray(got).dtype)
  want = np.asarray(want, np.float64)
  return assert_within(got, want, RTOL64 * np.abs(want).max(), what)


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
  theta = _thetas(n, seed=hw[0] * 100 + hw[1]).astype(np.float64)
  with jax.enable_x64(True):  # float64 on both sides (see RTOL64)
    ours = st.affine_grid(jnp.asarray(theta), (n, *hw), align_corners=align_corners)
    ours4 = st.affine_grid(jnp.asarray(theta), (n, *hw, 5), align_corners=align_corners)
  ref = F.affine_grid(torch.from_numpy(theta), (n, 5, *hw), align_corners=align_corners).numpy()
  assert ours.shape == ref.shape == (n, *hw, 2)
  _parity64(ours, ref)
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


def _sample_case64(*args, **kwargs):
  """_sample_case's values in float64 (for the float64 comparisons with torch)."""
  return tuple(a.astype(np.float64) for a in _sample_case(*args, **kwargs))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_values_match_torch(align_corners, padding_mode, mode):
  for seed, random_grid in ((0, False), (1, True)):
    x, grid = _sample_case64(seed, random_grid=random_grid, align_corners=align_corners)
    assert (np.abs(grid) > 1).any()  # samples outside the image
    with jax.enable_x64(True):
      ours, _, _ = _grid_sample_vjp(x, grid, np.zeros((2, 7, 10, 3)), align_corners,
                                    padding_mode, mode)
    ref = F.grid_sample(_nchw64(x), torch.from_numpy(grid), mode=mode, padding_mode=padding_mode,
                        align_corners=align_corners)
    _parity64(ours, _nhwc(ref), "values")


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
    x, grid = _sample_case64(seed, random_grid=random_grid, align_corners=align_corners)
    g = np.random.default_rng(seed + 10).normal(size=(2, 7, 10, 3))
    with jax.enable_x64(True):
      _, dx, dgrid = _grid_sample_vjp(x, grid, g, align_corners, padding_mode)
    tx = _nchw64(x).requires_grad_(True)
    tg = torch.from_numpy(grid).requires_grad_(True)
    ty = F.grid_sample(tx, tg, padding_mode=padding_mode, align_corners=align_corners)
    (ty * _nchw64(g)).sum().backward()
    _parity64(dx, _nhwc(tx.grad), "dx")
    _parity64(dgrid, tg.grad.numpy(), "dgrid")
    assert np.abs(tg.grad.numpy()).max() > 0.1  # a non-trivial comparison


def test_nearest_grads_match_torch():
  x, grid = _sample_case64(4, random_grid=True)
  g = np.random.default_rng(5).normal(size=(2, 7, 10, 3))
  with jax.enable_x64(True):
    _, dx, dgrid = _grid_sample_vjp(x, grid, g, False, "zeros", "nearest")
  tx = _nchw64(x).requires_grad_(True)
  (F.grid_sample(tx, torch.from_numpy(grid), mode="nearest", align_corners=False)
   * _nchw64(g)).sum().backward()
  _parity64(dx, _nhwc(tx.grad), "dx")
  np.testing.assert_array_equal(np.asarray(dgrid), 0.0)


# ---------------------------------------------------------------------------------------------
# affine_warp (fused) == affine_grid + grid_sample, and gradients w.r.t. theta


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_affine_warp_and_theta_grads_match_torch(align_corners, padding_mode):
  """Output 8x11 from a 13x17 input (same-size warps: the STN tests below)."""
  n, hw, out_hw, c = 3, (13, 17), (8, 11), 2
  theta = _thetas(n, seed=11).astype(np.float64)
  x = np.random.default_rng(12).normal(size=(n, *hw, c))
  g = np.random.default_rng(13).normal(size=(n, *out_hw, c))
  kw = dict(align_corners=align_corners, padding_mode=padding_mode)
  tx = _nchw64(x).requires_grad_(True)
  tth = torch.from_numpy(theta).requires_grad_(True)
  tgrid = F.affine_grid(tth, (n, c, *out_hw), align_corners=align_corners)
  ty = F.grid_sample(tx, tgrid, **kw)
  (ty * _nchw64(g)).sum().backward()
  assert np.abs(tth.grad.numpy()).max() > 1.0
  for fused in (True, False):  # float64 on both sides (see RTOL64)
    with jax.enable_x64(True):
      y, dx, dth = _warp_vjp(x, theta, g, (n, *out_hw), fused=fused, **kw)
    _parity64(y, _nhwc(ty), f"y fused={fused}")
    _parity64(dx, _nhwc(tx.grad), f"dx fused={fused}")
    _parity64(dth, tth.grad.numpy(), f"dtheta fused={fused}")


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


def _inject_theta(net, theta):
  """Forward hooks on a float64 TorchSTN: it continues from the JAX model's (float32) theta, the
  gradient flowing into fc_loc as through an identity, and records fc_loc's input, its hidden ReLU
  output and its own theta (whose .grad is then dL/dtheta at the JAX theta). Returns (record,
  hook handles)."""
  rec = {}

  def replace(module, inputs, output):
    rec["input"], rec["theta"] = inputs[0], output
    if output.requires_grad:
      output.retain_grad()
    jax_theta = torch.from_numpy(np.asarray(theta, np.float64).reshape(output.shape))
    return output + (jax_theta - output).detach()

  def hidden(module, inputs, output):
    rec["hidden"] = output

  return rec, (net.fc_loc.register_forward_hook(replace),
               net.fc_loc[1].register_forward_hook(hidden))


def _check_theta(theta, rec, net):
  """The theta head runs in float32 (fc_loc_1 on the float64 hidden h rounded to float32; weights
  and bias are float32 values, exact): h rounded (U32), a length-32 dot product (gamma_32) and the
  bias added: |dtheta| <= (32 + 3) U32 (|h| |W|^T + |b|). Returns torch's float64 theta, (B, 2, 3).
  """
  h = rec["hidden"].detach().numpy()
  w, b = net.fc_loc[2].weight.detach().numpy(), net.fc_loc[2].bias.detach().numpy()
  want = rec["theta"].detach().numpy()
  bound = (h.shape[-1] + 3) * U32 * (np.abs(h) @ np.abs(w).T + np.abs(b))
  assert_within(np.reshape(theta, want.shape), want, bound + RTOL64 * np.abs(want).max(), "theta")
  return want.reshape(-1, 2, 3)


@pytest.mark.parametrize("size", [224, 64])
def test_stn_matches_torch_eval(size):
  net = _torch_stn(size, seed=size).eval()
  x = _smooth_images(2, size, seed=size).astype(np.float64)
  variables = st.stn_from_torch_state_dict(net.state_dict())  # float32 weights
  assert variables["params"]["fc_loc_0"]["kernel"].shape == (10 * st.localization_output_hw(
      size, size)[0] ** 2, 32)
  # float64 but the float32 theta head (see RTOL64), at full float32 precision on accelerators too
  with jax.enable_x64(True), jax.default_matmul_precision("highest"):
    y, theta = jax.jit(functools.partial(st.SpatialTransformer().apply, return_theta=True))(
        to_float64(variables), x)
  assert theta.dtype == np.float32 and y.dtype == np.float64
  # The torch STN in float64, continuing from our theta (at 224 px a theta rounding error d moves
  # samples by ~111 d px, so the warp is compared from the same theta; theta itself against its
  # float32 bound).
  net = net.double()
  rec, hooks = _inject_theta(net, theta)
  with torch.no_grad():
    ty, _ = net(_nchw64(x))
  for hook in hooks:
    hook.remove()
  ttheta = _check_theta(theta, rec, net)
  assert np.abs(ttheta - np.asarray(st.IDENTITY_THETA).reshape(2, 3)).max() > 0.05
  assert np.abs(ttheta[0] - ttheta[1]).max() > 1e-3  # theta depends on the input
  _parity64(y, _nhwc(ty), "warped")
  assert (np.asarray(y) == 0).mean() > 0.05  # part of the output samples outside the image


def test_stn_train_mode_and_param_grads_match_torch():
  size = 64
  net = _torch_stn(size, seed=1).train()
  x = _smooth_images(3, size, seed=1).astype(np.float64)
  g = np.random.default_rng(2).normal(size=x.shape)
  variables = to_float64(st.stn_from_torch_state_dict(net.state_dict()))
  old_var = variables["batch_stats"]["loc_bn_0"]["var"]
  m = st.SpatialTransformer()

  def loss(params):
    (y, theta), upd = m.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              train=True, return_theta=True, mutable=["batch_stats"])
    return jnp.sum(y * g), (y, theta, upd)

  with jax.enable_x64(True), jax.default_matmul_precision("highest"):  # (see the eval test)
    (_, (y, theta, upd)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])
  net = net.double()  # float64, continuing from our theta (see test_stn_matches_torch_eval)
  rec, hooks = _inject_theta(net, theta)
  ty, _ = net(_nchw64(x))
  for hook in hooks:
    hook.remove()
  _check_theta(theta, rec, net)
  # Gradients: dL/dtheta is float64 on both sides at the same theta, then rounded to float32 for
  # the float32 theta head: its kernel gradient h^T g (sum over the batch B) is off by <= (B + 2)
  # U32 |h|^T |g|, its bias gradient by (B + 1) U32 sum |g|, and the gradient reaching the hidden
  # layer, g W in float32 (length 6), by e = (6 + 2) U32 |g| |W| per element. Below that layer all
  # is float64 and linear in that gradient: the first Dense's kernel gradient is off by <=
  # |input|^T (relu' e), the first conv's by sum_j |J_j| e_j, J_j = its gradient for a unit upstream
  # gradient at hidden unit j (B * 32 torch VJPs, ~1 s; a batched VJP is slower here).
  h = rec["hidden"]
  unit = torch.eye(h.numel(), dtype=torch.float64).reshape(-1, *h.shape)
  conv_jac = np.stack([torch.autograd.grad(h, net.localization[0].weight, grad_outputs=u,
                                           retain_graph=True)[0].numpy() for u in unit])
  (ty * _nchw64(g)).sum().backward()
  _parity64(y, _nhwc(ty), "warped")
  g_theta = rec["theta"].grad.numpy()
  hv, inp = h.detach().numpy(), rec["input"].detach().numpy()
  w1 = net.fc_loc[2].weight.detach().numpy()
  e_hidden = (w1.shape[0] + 2) * U32 * (np.abs(g_theta) @ np.abs(w1)) * (hv > 0)
  b = x.shape[0]
  bound_sd = {k: torch.zeros_like(p) for k, p in net.named_parameters()} | dict(net.named_buffers())
  bound_sd["fc_loc.0.weight"] = torch.from_numpy(e_hidden.T @ np.abs(inp))
  bound_fc0 = st.stn_from_torch_state_dict(bound_sd)["params"]["fc_loc_0"]["kernel"]
  torch_grads = {k: p.grad for k, p in net.named_parameters()} | dict(net.named_buffers())
  ref_fc0 = st.stn_from_torch_state_dict(torch_grads)["params"]["fc_loc_0"]["kernel"]
  pairs = [
      ("fc_loc_1 kernel", grads["fc_loc_1"]["kernel"], net.fc_loc[2].weight.grad.numpy().T,
       (b + 2) * U32 * (np.abs(hv).T @ np.abs(g_theta))),
      ("fc_loc_1 bias", grads["fc_loc_1"]["bias"], net.fc_loc[2].bias.grad.numpy(),
       (b + 1) * U32 * np.abs(g_theta).sum(0)),
      ("fc_loc_0 kernel", grads["fc_loc_0"]["kernel"], ref_fc0, bound_fc0),  # (flatten order too)
      ("fc_loc_0 bias", grads["fc_loc_0"]["bias"], net.fc_loc[0].bias.grad.numpy(),
       e_hidden.sum(0)),
      ("loc_conv_0 kernel", grads["loc_conv_0"]["kernel"],
       net.localization[0].weight.grad.numpy().transpose(2, 3, 1, 0),
       np.tensordot(e_hidden.reshape(-1), np.abs(conv_jac), axes=1).transpose(2, 3, 1, 0))]
  for what, ours, ref, bound in pairs:
    assert np.abs(ref).max() > 1e-3, what
    assert_within(ours, ref, bound + RTOL64 * np.abs(ref).max(), what)
  # Running statistics: mean as torch; torch's variance update uses the unbiased batch variance:
  # torch_new - 0.9 old = (ours - 0.9 old) n / (n - 1), n = B (H - 6)^2 (float64).
  bn = net.localization[1]
  new = upd["batch_stats"]["loc_bn_0"]
  _parity64(new["mean"], bn.running_mean.numpy(), "running mean")
  count = b * (size - 6) ** 2
  _parity64(0.9 * old_var + (np.asarray(new["var"]) - 0.9 * old_var) * count / (count - 1),
            bn.running_var.numpy(), "running var")


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
