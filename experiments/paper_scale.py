"""Paper-scale configurations (AlexNet, VGG-16, ResNet-50 on CIFAR-10 and CIFAR-100), for a GPU.

Print the commands (nothing is run):

  python experiments/paper_scale.py --data-root /data/cifar

Measure this machine's throughput for each model and print run-time estimates per stage
(takes a few minutes on a CPU, seconds on a GPU):

  python experiments/paper_scale.py --data-root /data/cifar --measure

Settings are the paper's: 200 baseline epochs (the paper starts from trained models), Ranger
and every method's profile on 3,000 training images, FT-ClipAct with the toolbox's search
(4 candidates, 3-4 rounds, 5 BERs x 5 trials x 1,000 images per candidate), FitAct 50 epochs,
ProAct 50 epochs for the neuron-wise last site and 20 per layer-wise site (Adam 0.01 halved every
10 epochs, batch 128), and a campaign of 6 BERs x 500 trials x 10,000 test images, paired over
the five variants. DATA_ROOT holds cifar-10-python.tar.gz and cifar-100-python.tar.gz (or tfds
data: drop --data-dir and add --download on a machine with network).
"""

from __future__ import annotations

import argparse
import time

MODELS = ("alexnet", "vgg16", "resnet50")
DATASETS = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
PAPER_BERS = "1e-7,3e-7,1e-6,3e-6,1e-5,3e-5"
TRAIN_EPOCHS, FITACT_EPOCHS, LAST_EPOCHS, LAYER_EPOCHS = 200, 50, 50, 20
N_TRAIN, N_TEST, TRIALS = 45_000, 10_000, 500


def commands(model: str, dataset: str, root: str, work: str) -> list[str]:
  w = f"{work}/{model}_{dataset}"
  base = f"{w}/base/model"
  cmds = [f"proact train --model {model} --dataset {dataset} --data-dir {root}/{DATASETS[dataset]}"
          f" --epochs {TRAIN_EPOCHS} --lr 0.05 --warmup-epochs 1 --out {w}/base"]
  for m, extra in [("ranger", "--granularity layer"), ("ft-clipact", ""),
                   ("fitact", f"--epochs {FITACT_EPOCHS}"),
                   ("proact", f"--last-epochs {LAST_EPOCHS} --epochs {LAYER_EPOCHS}")]:
    cmds.append(f"proact harden --checkpoint {base} --method {m} {extra} --out {w}/{m}".replace(
        "  ", " "))
  variants = " ".join(f"--checkpoint {c}" for c in
                      [base] + [f"{w}/{m}" for m in ("ranger", "ft-clipact", "fitact", "proact")])
  cmds.append(f"proact sweep {variants} --bers {PAPER_BERS} --trials {TRIALS} --out {w}/campaign.jsonl")
  cmds.append(f"proact activations {variants} --ber 1e-4 --trials 20 --images 1000 "
              f"--out {w}/activations.json")
  cmds.append(f"proact report {w}/campaign.jsonl {w}/activations.json --out {w}/report")
  return cmds


def measure(model_name: str, num_classes: int, batch: int = 128, iters: int = 3) -> dict:
  """Images per second: eval forward, training step (weights), threshold step (ProAct)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import proact_jax as pj
  from proact_jax.training.loop import TrainConfig, create_train_state, train_step

  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)).astype(np.float32))
  y = jnp.zeros(batch, jnp.int32)

  def rate(fn):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(iters):
      out = fn()
    jax.block_until_ready(out)
    return batch * iters / (time.perf_counter() - t)

  base = pj.create_model(model_name, num_classes)
  state = create_train_state(jax.random.PRNGKey(0), base, (32, 32, 3), TrainConfig(), 100)
  step = jax.jit(train_step, static_argnums=(4, 5, 6))
  v = {"params": state.params, **({"batch_stats": state.batch_stats}
                                  if state.batch_stats is not None else {})}
  fwd = jax.jit(lambda v, x: base.apply(v, x))
  student = pj.create_model(model_name, num_classes, "smooth", "hybrid")
  sv = student.init(jax.random.PRNGKey(0), x[:1])
  frozen, thr = pj.split(sv)
  g = jax.jit(jax.grad(lambda t, f, x: optax.softmax_cross_entropy_with_integer_labels(
      student.apply(pj.merge(f, t), x), y).mean()))
  return {"forward": rate(lambda: fwd(v, x)),
          "train": rate(lambda: step(state, x, y, jax.random.PRNGKey(0), 4, True, True)[1]),
          "threshold": rate(lambda: g(thr, frozen, x)),
          "sites": len(pj.site_order(student, (32, 32, 3)))}


def estimate(r: dict) -> dict:
  """Hours per stage from images/second ``r`` (see ``measure``)."""
  s = r["sites"]
  h = lambda n, per_s: n / per_s / 3600
  return {
      "train": h(TRAIN_EPOCHS * N_TRAIN, r["train"]),
      "ranger": h(3000 + N_TEST, r["forward"]),
      "ft-clipact": h(s * 4 * 4 * 5 * 5 * 1000, r["forward"]),
      "fitact": h(FITACT_EPOCHS * N_TRAIN, r["threshold"]),
      "proact": h((LAST_EPOCHS + LAYER_EPOCHS * (s - 1)) * N_TRAIN, r["threshold"])
                + h(N_TRAIN, r["forward"]),
      "campaign": h(5 * 6 * TRIALS * N_TEST, r["forward"]),
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data-root", default="/data/cifar")
  ap.add_argument("--work", default="runs/paper")
  ap.add_argument("--measure", action="store_true")
  a = ap.parse_args()
  for model in MODELS:
    for dataset in DATASETS:
      print(f"# {model} on {dataset}")
      for c in commands(model, dataset, a.data_root, a.work):
        print(c)
      if a.measure:
        import jax
        r = measure(model, 10 if dataset == "cifar10" else 100)
        est = estimate(r)
        print(f"# measured on {jax.devices()[0].platform} ({jax.device_count()} device(s)): "
              f"forward {r['forward']:.0f} img/s, train {r['train']:.0f} img/s, threshold "
              f"step {r['threshold']:.0f} img/s")
        print("# estimated hours: " + ", ".join(f"{k} {v:.1f}" for k, v in est.items())
              + f"; total {sum(est.values()):.1f}")
      print()


if __name__ == "__main__":
  main()
