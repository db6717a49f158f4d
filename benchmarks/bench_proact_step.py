"""ProAct training-step cost vs a plain forward+backward of the student, measured in one run.

Run:  python benchmarks/bench_proact_step.py [--model alexnet] [--batch 128] [--rounds 5]

Times, round-robin on the same batch (so machine noise hits all alike; the minimum over rounds
is kept): a jitted ProAct step (KD + CE + L2 loss, gradient w.r.t. the thresholds, per-site
optax partition, Adam, projection) for the last site (trained first) and for the first site
(needs the full backward pass), a plain jitted forward+backward of the same student
(cross-entropy gradient w.r.t. all thresholds), and a forward+backward w.r.t. all weights.
Target (issue 5): ProAct step / plain forward+backward <= 1.2.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proact_jax as pj
from proact_jax.methods.threshold_training import ThresholdTraining, make_step, optimizer


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="alexnet")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--iters", type=int, default=3)
  a = ap.parse_args()
  shape = (8, 8, 1) if a.model == "small_cnn" else (32, 32, 3)
  student = pj.create_model(a.model, 10, "smooth", "hybrid")
  frozen, thr = pj.split(student.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(a.batch, *shape)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, a.batch).astype(np.int32))
  t_logits = jnp.asarray(rng.normal(size=(a.batch, 10)).astype(np.float32))

  def ce(t, f, x, y):
    logits = student.apply(pj.merge(f, t), x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  plain = jax.jit(jax.value_and_grad(ce))
  weights = jax.jit(jax.value_and_grad(lambda f, t, x, y: ce(t, f, x, y)))
  fns = {"plain fwd+bwd (thresholds)": lambda: plain(thr, frozen, x, y),
         "fwd+bwd (weights)": lambda: weights(frozen, thr, x, y)}
  order = pj.site_order(student, shape)
  for site in (order[-1], order[0]):
    cfg = ThresholdTraining(gamma=1e-3)
    mask = jax.tree_util.tree_map(bool, pj.site_mask(thr, site))
    labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
    tx = optax.multi_transform({"train": optimizer(cfg, 100), "freeze": optax.set_to_zero()},
                               labels)
    step, state = make_step(student, tx, cfg, mask, thr), tx.init(thr)
    fns[f"proact step, site {site}"] = (lambda step=step, state=state:
                                        step(thr, state, frozen, x, y, t_logits))
  for f in fns.values():
    jax.block_until_ready(f())
  times = {k: [] for k in fns}
  for _ in range(a.rounds):
    for k, f in fns.items():
      t = time.perf_counter()
      for _ in range(a.iters):
        out = f()
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t) / a.iters)
  best = {k: min(v) for k, v in times.items()}
  base = best["plain fwd+bwd (thresholds)"]
  print(f"model {a.model}, batch {a.batch}, min over {a.rounds} round-robin rounds of {a.iters}")
  for k, t in best.items():
    print(f"  {k:<34} {1e3 * t:8.1f} ms   ratio to plain fwd+bwd {t / base:.3f}")


if __name__ == "__main__":
  main()
