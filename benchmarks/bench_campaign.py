"""Campaign cost ratios, measured in one run (by hand; not a test).

  python benchmarks/bench_campaign.py [--images 512] [--trials 3] [--bers 1e-7,1e-4] \
      [--skip-vmap] [--copying] [--checkpoint /tmp/x/base/model] [--images-per-trial 500] [--only-budget]

``--checkpoint``: a trained digits small_cnn for (d); ``--only-budget`` runs (d) alone.

(a) campaign time / (clean forward time of the same images x trials), AlexNet, BER 1e-7..1e-4,
with the static flip caps sized per BER (``trial.plan_at``, the default) and at the largest BER
(as before), side by side; ``--copying`` adds a fresh tree copy per trial
(``_run_trials(carried=False)``) instead of the carried tree;
(b) lax.map vs vmap trial batching; (c) corrupting one copy (pre-quantised path as the campaign
uses it, and the re-encoding path of ``flip_bits`` on unquantised variables) vs one forward batch
of 256;
(d) image evaluations our sequential campaign needs for "mean accuracy at 6 BERs with 95% CI
half-width <= 0.5 points" vs the paper's 500 trials x 10,000 images x 6 BERs; with
``--images-per-trial M`` every trial evaluates a fresh random subset of M test images
(``run_campaign(images_per_trial=M)``), which needs more trials but far fewer image evaluations.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import proact_jax as pj
from proact_jax.core.evaluate import _evaluate_jit, eval_apply, make_eval_set
from proact_jax.faults import campaign, trial
from proact_jax.faults import injection as faults

from budget_plan import trials_needed, variance_terms  # benchmarks/ is on sys.path when run

PAPER_BERS = [1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5]


def _time(f, repeat=3):
  f()  # warm-up / compile
  ts = []
  for _ in range(repeat):
    t = time.perf_counter()
    f()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def bench_alexnet(n_images: int, trials: int, vmap_trials: int, bers: list[float],
                  copying: bool = False):
  model = pj.create_model("alexnet", 10)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (n_images, 32, 32, 3)))
  y = np.zeros(n_images, np.int32)
  data = make_eval_set(x, y, 256)
  clean = faults.quantize_with_aux(v)  # (quantised tree, aux), as the campaign passes it
  fwd = _time(lambda: jax.block_until_ready(_evaluate_jit(eval_apply(model), clean[0], data)))
  print(f"AlexNet, {n_images} images: clean forward {fwd:.3f} s")
  plan = campaign.make_plan(v, "q15.16", None, max(bers))
  key = jax.random.PRNGKey(2)

  def run(i, ber, n, carried=True, full_caps=False):
    """Trials 0..n-1; ``full_caps``: the static caps at the largest BER (no ``plan_at``)."""
    old = trial._MIN_SHRINK
    trial._MIN_SHRINK = 1 << 62 if full_caps else old
    try:
      return campaign._run_trials(model, plan, clean, data, key, i, ber, range(n), "map", None,
                                  carried=carried)
    finally:
      trial._MIN_SHRINK = old

  ratios = {}
  for i, ber in enumerate(bers):
    t0 = time.perf_counter()
    run(i, ber, trials)
    run(i, ber, trials, full_caps=True)
    if copying:
      run(i, ber, trials, carried=False)
    print(f"BER {ber:.0e}: compile + first chunks {time.perf_counter() - t0:.1f} s")
    t, tfull = (_time(lambda f=f: run(i, ber, trials, full_caps=f), repeat=2)
                for f in (False, True))
    ratios[ber] = t / (fwd * trials)
    print(f"(a) BER {ber:.0e}: {t:.2f} s for {trials} trials; ratio {ratios[ber]:.3f} "
          f"(caps at the largest BER: {tfull:.2f} s, ratio {tfull / (fwd * trials):.3f}; "
          f"{1e3 * (tfull - t) / trials:.1f} ms per trial saved by per-BER caps)")
    if copying:
      tcopy = _time(lambda: run(i, ber, trials, carried=False), repeat=2)
      print(f"    copying a fresh tree per trial: {tcopy:.2f} s, ratio "
            f"{tcopy / (fwd * trials):.3f}; {1e3 * (tcopy - t) / trials:.1f} ms per trial saved")
  small = make_eval_set(x[:256], y[:256], 256)
  if vmap_trials:
    tm = _time(lambda: campaign._run_trials(model, plan, clean, small, key, 2, 1e-5,
                                            range(vmap_trials), "map", None), repeat=1)
    tv = _time(lambda: campaign._run_trials(model, plan, clean, small, key, 2, 1e-5,
                                            range(vmap_trials), "vmap", None), repeat=1)
    print(f"(b) {vmap_trials} trials x 256 images: map {tm:.2f} s, vmap {tv:.2f} s, "
          f"vmap/map {tv / tm:.2f}")
  corrupt = jax.jit(lambda k, c: campaign.corrupt(k, c[0], jnp.float32(1e-5), plan,
                                                  prequantized=True, aux=c[1]))
  tc = _time(lambda: jax.block_until_ready(corrupt(key, clean)))
  slow = jax.jit(lambda k, v: campaign.corrupt(k, v, jnp.float32(1e-5), plan))
  ts = _time(lambda: jax.block_until_ready(slow(key, v)))
  f256 = _time(lambda: jax.block_until_ready(_evaluate_jit(eval_apply(model), clean[0], small)))
  print(f"(c) corrupt one copy {1e3 * tc:.1f} ms (re-encoding path {1e3 * ts:.1f} ms), forward "
        f"of 256 images {1e3 * f256:.1f} ms, ratio {tc / f256:.3f} ({ts / f256:.3f})")
  return ratios


def bench_budget(checkpoint: str, max_trials: int, target_pp: float,
                 images_per_trial: int | None = None):
  from proact_jax.training.checkpoint import load_checkpoint
  from proact_jax.training.checkpoint_data import checkpoint_data
  model, v, meta = load_checkpoint(checkpoint)
  d = checkpoint_data(meta)
  data = make_eval_set(d.x_test, d.y_test)
  t = time.perf_counter()
  res = campaign.run_campaign(jax.random.PRNGKey(0), {"relu": (model, v)}, data, PAPER_BERS,
                              max_trials, ci_target=target_pp, min_trials=30, chunk=10,
                              progress=False, images_per_trial=images_per_trial)
  wall = time.perf_counter() - t
  rows = res.summary_rows()
  m = images_per_trial or data.n
  used = sum(r["n"] for r in rows) * m
  paper = 500 * 10_000 * len(PAPER_BERS)
  like = 500 * data.n * len(PAPER_BERS)
  print(f"(d) {meta['model']} on {meta['dataset']}, {data.n} test images, "
        + (f"trials on random subsets of {m}, " if images_per_trial else "")
        + f"target {target_pp} pp, max {max_trials} trials/BER ({wall:.0f} s):")
  for r, acc in zip(rows, res.accuracies("relu")):
    # variance decomposition (budget_plan.py): per-trial accuracy on m fresh images of N has
    # variance Var_fault + Var_image (N-m)/((N-1) m); with all N images the image term is 0
    vfault, vimg = variance_terms(acc, data.n, images_per_trial)
    term = vimg * (data.n - m) / ((data.n - 1) * m)
    need = trials_needed(vfault, vimg, m, data.n, target_pp / 100)
    print(f"    BER {r['ber']:.0e}: n={r['n']:4d} mean {100 * r['mean']:.2f}% "
          f"half-width {100 * r['half_width']:.2f} pp; sd_fault {100 * np.sqrt(vfault):.2f} pp, "
          f"image term sd {100 * np.sqrt(term):.2f} pp; "
          f"trials needed for the target {need}")
  print(f"    image evaluations: ours {used:,} ({sum(r['n'] for r in rows)} trials x {m}) "
        f"vs paper 500 x 10,000 x 6 = {paper:,} "
        f"(ratio 1/{paper / used:.0f}); vs 500 x {data.n} x 6 = {like:,} "
        f"(ratio 1/{like / used:.1f})")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--trials", type=int, default=3)
  p.add_argument("--vmap-trials", type=int, default=2)
  p.add_argument("--skip-vmap", action="store_true", help="skip (b)")
  p.add_argument("--copying", action="store_true", help="(a): also time a tree copy per trial")
  p.add_argument("--bers", default="1e-7,1e-6,1e-5,1e-4", help="comma-separated, for (a)")
  p.add_argument("--checkpoint", default=None, help="trained digits small_cnn for (d)")
  p.add_argument("--max-trials", type=int, default=500)
  p.add_argument("--target", type=float, default=0.5)
  p.add_argument("--images-per-trial", type=int, default=None,
                 help="(d): evaluate each trial on a fresh random subset of M test images")
  p.add_argument("--only-budget", action="store_true", help="run (d) only (needs --checkpoint)")
  args = p.parse_args()
  if args.only_budget and not args.checkpoint:
    p.error("--only-budget needs --checkpoint")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s)")
  if not args.only_budget:
    bench_alexnet(args.images, args.trials, 0 if args.skip_vmap else args.vmap_trials,
                  [float(b) for b in args.bers.split(",")], args.copying)
  if args.checkpoint:
    bench_budget(args.checkpoint, args.max_trials, args.target, args.images_per_trial)


if __name__ == "__main__":
  main()
