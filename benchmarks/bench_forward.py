"""Forward and training throughput, JAX vs PyTorch, same architectures, measured in one run.

Run (PyTorch only for this benchmark: ``pip install -e ".[bench]"``):

  python benchmarks/bench_forward.py --models alexnet,vgg16 --batches 64,128,256 \
      --configs default,ynn_dot,legacy --rounds 5

Each configuration is a long-lived worker process (XLA flags must be set before jax is imported),
compiled once; the parent then asks every worker in turn, round after round, to time the same
case, so machine noise hits all of them alike. The best round per case is reported (img/s) and
every JAX figure is also given as a ratio to PyTorch's. Configurations:

* ``default``: this package's models as shipped (fast CPU conv/pool paths, ``models/fast_ops.py``);
* ``legacy``: the same models with flax's ``nn.Conv`` and ``nn.max_pool`` (the previous code);
* ``ynn_dot``, ``onednn``, ``xnnpack``: ``default`` plus one XLA:CPU flag (see ``FLAGS``);
* ``torch``: the same architectures in PyTorch (eval mode, ``inference_mode``, NCHW).

Cases: ``fwd`` (jitted eval forward), ``train`` (jitted SGD training step with augmentation, from
device arrays) and ``epoch`` (``train`` fed by this package's host pipeline: seeded shuffle,
numpy batches, host-to-device transfer; the figure an actual ``proact train`` epoch pays).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

FLAGS = {
    "default": "",
    "legacy": "",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}


# ----------------------------------------------------------------------------- workers

def _jax_worker(config: str, models: list[str], batches: list[int], threads: int):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  import proact_jax as pj
  from proact_jax.data import pipeline
  from proact_jax.training.loop import TrainConfig, create_train_state, train_step
  if config == "legacy":
    from proact_jax.models import alexnet, resnet, vgg
    for mod in (alexnet, vgg, resnet):
      mod.Conv = nn.Conv
    pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))
    alexnet.max_pool_2x2 = vgg.max_pool_2x2 = pool
  rng = np.random.default_rng(0)
  cases = {}
  for name in models:
    model = pj.create_model(name, 10)
    for b in batches:
      x = jnp.asarray(rng.normal(size=(b, 32, 32, 3)).astype(np.float32))
      y = jnp.asarray(rng.integers(0, 10, b).astype(np.int32))
      state = create_train_state(jax.random.PRNGKey(0), model, (32, 32, 3), TrainConfig(), 100)
      v = {"params": state.params}
      if state.batch_stats is not None:
        v["batch_stats"] = state.batch_stats
      fwd = jax.jit(lambda v, x, m=model: m.apply(v, x))
      step = jax.jit(train_step, static_argnums=(4, 5, 6))
      key = jax.random.PRNGKey(1)
      x_host = rng.normal(size=(8 * b, 32, 32, 3)).astype(np.float32)
      y_host = rng.integers(0, 10, 8 * b).astype(np.int32)

      def run_fwd(n, v=v, x=x, fwd=fwd):
        for _ in range(n):
          out = fwd(v, x)
        jax.block_until_ready(out)
        return n * x.shape[0]

      def run_train(n, state=state, x=x, y=y, step=step):
        for i in range(n):
          state, loss, _ = step(state, x, y, jax.random.fold_in(key, i), 4, True, True)
        jax.block_until_ready(loss)
        return n * x.shape[0]

      def run_epoch(n, state=state, step=step, b=b, xh=x_host, yh=y_host):
        seen = 0
        while seen < n * b:
          for i, (xb, yb) in enumerate(pipeline.iterate_batches(xh, yh, b, seed=seen,
                                                                shuffle=True,
                                                                drop_remainder=True)):
            state, loss, _ = step(state, jnp.asarray(xb), jnp.asarray(yb),
                                  jax.random.fold_in(key, i), 4, True, True)
            seen += b
            if seen >= n * b:
              break
        jax.block_until_ready(loss)
        return seen

      for case, fn in (("fwd", run_fwd), ("train", run_train), ("epoch", run_epoch)):
        fn(1)  # compile
        cases[(name, b, case)] = fn
  _serve(cases)


def _torch_worker(models: list[str], batches: list[int], threads: int):
  import numpy as np
  import torch
  from torch import nn

  torch.set_num_threads(threads)

  def alexnet():
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, 1, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, 1, 1), nn.ReLU(), nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))

  def vgg16():
    layers, c = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512,
              512, "M"):
      if v == "M":
        layers.append(nn.MaxPool2d(2))
      else:
        layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
        c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))

  rng = np.random.default_rng(0)
  cases = {}
  for name in models:
    model = {"alexnet": alexnet, "vgg16": vgg16}[name]()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    for b in batches:
      x = torch.from_numpy(rng.normal(size=(b, 3, 32, 32)).astype(np.float32))
      y = torch.from_numpy(rng.integers(0, 10, b))

      def run_fwd(n, model=model, x=x):
        model.eval()
        with torch.inference_mode():
          for _ in range(n):
            model(x)
        return n * x.shape[0]

      def run_train(n, model=model, x=x, y=y, opt=opt):
        model.train()
        for _ in range(n):
          opt.zero_grad()
          nn.functional.cross_entropy(model(x), y).backward()
          opt.step()
        return n * x.shape[0]

      for case, fn in (("fwd", run_fwd), ("train", run_train)):
        fn(1)
        cases[(name, b, case)] = fn
  _serve(cases)


def _serve(cases):
  print("ready", flush=True)
  for line in sys.stdin:
    name, b, case, n = line.split()
    fn = cases.get((name, int(b), case))
    if fn is None:
      print("nan", flush=True)
      continue
    t = time.perf_counter()
    images = fn(int(n))
    print(images / (time.perf_counter() - t), flush=True)


# ----------------------------------------------------------------------------- parent

def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default="alexnet,vgg16")
  ap.add_argument("--batches", default="64,128,256")
  ap.add_argument("--configs", default="default,legacy,ynn_dot")
  ap.add_argument("--cases", default="fwd,train,epoch")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--iters", type=int, default=3, help="batches per timed case")
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--json", default=None, help="also write the figures here")
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  models, batches = a.models.split(","), [int(b) for b in a.batches.split(",")]
  if a.worker == "torch":
    return _torch_worker(models, batches, a.threads)
  if a.worker:
    return _jax_worker(a.worker, models, batches, a.threads)

  configs = a.configs.split(",") + ([] if a.no_torch else ["torch"])
  unknown = [c for c in configs if c != "torch" and c not in FLAGS]
  if unknown:
    sys.exit(f"bench_forward: unknown configuration(s) {', '.join(unknown)}")
  workers = {}
  for c in configs:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if c != "torch" and FLAGS[c]:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FLAGS[c]).strip()
    workers[c] = subprocess.Popen(
        [sys.executable, __file__, "--worker", c, "--models", a.models, "--batches", a.batches,
         "--threads", str(a.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env)
    print(f"{c}: compiling", file=sys.stderr)
    assert workers[c].stdout.readline().strip() == "ready", f"worker {c} failed"
  best: dict = {}
  for r in range(a.rounds):
    for name in models:
      for b in batches:
        for case in a.cases.split(","):
          for c, w in workers.items():
            w.stdin.write(f"{name} {b} {case} {a.iters}\n")
            w.stdin.flush()
            rate = float(w.stdout.readline())
            k = (name, b, case, c)
            best[k] = max(best.get(k, 0.0), rate) if rate == rate else rate
    print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
  for w in workers.values():
    w.stdin.close()
    w.wait()

  print(f"\nimg/s, best of {a.rounds} rounds x {a.iters} batches; ratio = JAX / PyTorch\n")
  print("| model | batch | case | " + " | ".join(configs) + " | " +
        " | ".join(f"{c}/torch" for c in configs if c != "torch") + " |")
  print("|" + "---|" * (3 + len(configs) + len(configs) - ("torch" in configs)))
  for name in models:
    for b in batches:
      for case in a.cases.split(","):
        row = [best.get((name, b, case, c), float("nan")) for c in configs]
        t = best.get((name, b, case, "torch"), float("nan"))
        ratios = [f"{best[(name, b, case, c)] / t:.2f}" if t == t and t > 0 else "-"
                  for c in configs if c != "torch"]
        print(f"| {name} | {b} | {case} | " + " | ".join(f"{v:,.0f}" if v == v else "-"
                                                        for v in row) +
              " | " + " | ".join(ratios) + " |")
  if a.json:
    with open(a.json, "w") as f:
      json.dump([{"model": k[0], "batch": k[1], "case": k[2], "config": k[3], "img_s": v}
                 for k, v in best.items()], f, indent=1)


if __name__ == "__main__":
  main()
