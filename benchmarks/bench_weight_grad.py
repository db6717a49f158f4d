"""The weight gradient of one convolution, XLA's own (``lax``) vs models/fast_ops' patches
matmul, on the convolution shapes of ResNet-20 and AlexNet (CIFAR-10, batch 128): which models
use ``fast_ops.Conv``. Measured in one run, best of ``--rounds`` rounds of ``--iters`` calls.

  python benchmarks/bench_weight_grad.py [--batch 128] [--rounds 3] [--iters 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.models import fast_ops

# name, input H=W, C_in, C_out, stride, kernel, padding
SHAPES = [("resnet20 stage 1 3x3", 32, 16, 16, 1, 3, 1),
          ("resnet20 stage 2 3x3", 16, 32, 32, 1, 3, 1),
          ("resnet20 stage 3 3x3", 8, 64, 64, 1, 3, 1),
          ("resnet20 down 16->32 3x3/2", 32, 16, 32, 2, 3, 1),
          ("resnet20 down 32->64 3x3/2", 16, 32, 64, 2, 3, 1),
          ("resnet20 shortcut 1x1/2", 32, 16, 32, 2, 1, 0),
          ("alexnet conv1 3x3/2", 32, 3, 64, 2, 3, 1),
          ("alexnet conv2 3x3 pad 2", 8, 64, 192, 1, 3, 2),
          ("alexnet conv3 3x3", 5, 192, 384, 1, 3, 1)]


def _best_ms(f, *args, rounds: int, iters: int) -> float:
  f(*args).block_until_ready()  # compile
  best = float("inf")
  for _ in range(rounds):
    t = time.perf_counter()
    for _ in range(iters):
      out = f(*args)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - t) / iters)
  return 1e3 * best


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--iters", type=int, default=5)
  a = ap.parse_args(argv)
  rng = np.random.default_rng(0)
  print("| convolution | output | dw lax (ms) | dw patches (ms) | lax / patches |")
  print("|---|---|---|---|---|")
  for name, hw, ci, co, s, k, p in SHAPES:
    x = jnp.asarray(rng.normal(size=(a.batch, hw, hw, ci)), jnp.float32)
    w = jnp.asarray(0.1 * rng.normal(size=(k, k, ci, co)), jnp.float32)
    pad, st = ((p, p), (p, p)), (s, s)
    g = jnp.ones_like(fast_ops._conv_lax(x, w, st, pad, None))

    def dw(conv):
      return jax.jit(lambda x, w: jax.grad(lambda w_: jnp.vdot(conv(x, w_, st, pad, None), g))(w))

    t_lax = _best_ms(dw(fast_ops._conv_lax), x, w, rounds=a.rounds, iters=a.iters)
    t_pat = _best_ms(dw(fast_ops._conv), x, w, rounds=a.rounds, iters=a.iters)
    print(f"| {name} | {g.shape[1]}x{g.shape[2]}x{co} | {t_lax:.1f} | {t_pat:.1f} | "
          f"{t_lax / t_pat:.2f} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
