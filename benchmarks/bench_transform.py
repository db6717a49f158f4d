"""Cost of clip_activations (issue 13): the jitted transformed model vs a hand-written clipped one.

Run:  python benchmarks/bench_transform.py [--batch 64] [--width 32] [--rounds 7] [--iters 10]

A small flax.linen CNN for 32x32x3 inputs (3 conv + 2 dense layers, ReLU after each but the
classifier, one conv block under nn.remat) is written once with an ``act(x, i)`` argument. Timed,
round-robin on the same batch (machine noise hits both alike; the minimum over rounds is kept):

* transformed: ``jax.jit(clip_activations(model.apply, "smooth", "hybrid"))``;
* hand-written: ``jax.jit`` of the same model built with the smooth clip at each site;

both forward, and forward+backward w.r.t. the thresholds (round order alternates). The
interpreter runs at trace time only, so the compiled programs should be the same computation: the
script also checks that the two compiled HLO modules (forward, and forward+backward) are identical once module name,
source metadata and stack-frame tables are stripped (a check that machine noise cannot blur).
Target: ratio <= 1.02.
"""

import argparse
import re
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.core.activations import smooth_clip
from proact_jax.transform.clip import clip_activations


def _relu(x, i):
  del i
  return nn.relu(x)


class Block(nn.Module):
  width: int
  act: Callable
  i: int

  @nn.compact
  def __call__(self, x):
    return self.act(nn.Conv(self.width, (3, 3))(x), self.i)


class CNN(nn.Module):
  width: int = 32
  act: Callable = _relu

  @nn.compact
  def __call__(self, x):
    x = Block(self.width, self.act, 0)(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.remat(Block)(2 * self.width, self.act, 1)(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = Block(2 * self.width, self.act, 2)(x)
    x = x.reshape((x.shape[0], -1))
    x = self.act(nn.Dense(128)(x), 3)
    return nn.Dense(10)(x)


def _normalized_hlo(f, *args) -> str:
  """Compiled HLO without module name, source metadata and stack-frame tables."""
  text = f.lower(*args).compile().as_text()
  text = re.sub(r",? ?metadata=\{[^}]*\}|,? ?stack_frame_id=\d+", "", text)
  lines = [l for l in text.splitlines() if not l.startswith("HloModule")]
  keep, skipping = [], False
  for line in lines:
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      skipping = True
    elif skipping and not re.match(r"^\d+ ", line):
      skipping = False
    if not skipping:
      keep.append(line)
  return "\n".join(keep)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--width", type=int, default=32)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--iters", type=int, default=10)
  a = ap.parse_args()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(a.batch, 32, 32, 3)).astype(np.float32))
  model = CNN(a.width)
  params = model.init(jax.random.PRNGKey(0), x[:1])

  g = clip_activations(model.apply, "smooth", "hybrid")
  prof = g.profile(params, [x])
  thr = jax.tree_util.tree_map(lambda t: 0.5 * t, g.init_thresholds(params, x, profile=prof))

  def hand(params, thresholds, x):  # argument names as g's, so HLO parameter names match
    act = lambda y, i: smooth_clip(y, thresholds[f"relu_{i}"].astype(y.dtype))  # noqa: E731
    return CNN(a.width, act).apply(params, x)

  def loss(f):
    return lambda t, p, x: jnp.sum(f(p, t, x) ** 2)

  fns = {
      "fwd transformed": (jax.jit(g), (params, thr, x)),
      "fwd hand-written": (jax.jit(hand), (params, thr, x)),
      "fwd+bwd(thr) transformed": (jax.jit(jax.grad(loss(g))), (thr, params, x)),
      "fwd+bwd(thr) hand-written": (jax.jit(jax.grad(loss(hand))), (thr, params, x)),
  }
  np.testing.assert_allclose(fns["fwd transformed"][0](params, thr, x),
                             fns["fwd hand-written"][0](params, thr, x), rtol=1e-5, atol=1e-5)
  same = {what: _normalized_hlo(fns[f"{what} transformed"][0], *fns[f"{what} transformed"][1])
          == _normalized_hlo(fns[f"{what} hand-written"][0], *fns[f"{what} hand-written"][1])
          for what in ("fwd", "fwd+bwd(thr)")}
  for f, args in fns.values():
    jax.block_until_ready(f(*args))
  times = {k: [] for k in fns}
  for r in range(a.rounds):  # alternate the order each round: ABBA...
    for k in list(fns)[::-1 if r % 2 else 1]:
      f, args = fns[k]
      t0 = time.perf_counter()
      for _ in range(a.iters):
        out = f(*args)
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t0) / a.iters)
  best = {k: min(v) for k, v in times.items()}
  print(f"batch {a.batch}, width {a.width}, {jax.devices()[0].platform}, min over "
        f"{a.rounds} rounds x {a.iters} iters")
  for k, v in best.items():
    print(f"  {k:28s} {1e3 * v:8.3f} ms")
  for what in ("fwd", "fwd+bwd(thr)"):
    r = best[f"{what} transformed"] / best[f"{what} hand-written"]
    per_round = np.median(np.array(times[f"{what} transformed"]) /
                          np.array(times[f"{what} hand-written"]))
    print(f"ratio transformed / hand-written, {what}: {r:.3f} of minima, {per_round:.3f} median "
          f"of per-round ratios (target <= 1.02); compiled HLO identical modulo names and "
          f"metadata: {same[what]}")


if __name__ == "__main__":
  main()
