"""Harden your own model with ProAct and compare it with the baseline under faults (issue 13).

Run:  python examples/harden_own_model.py      (digits data embedded in scikit-learn, ~2 min)

The model below is plain flax.linen calling ``nn.relu`` inline: it knows nothing of proact-jax.
``pj.function_network`` wraps any ``fn(params, x) -> logits`` (linen, NNX, Equinox, plain JAX);
the methods (``ranger``, ``ft_clipact``, ``fitact``, ``proact``) and ``run_campaign`` take the
result like a built-in model. The sweep is paired: both models see the same weight flips and
the same activation flips in every trial.
"""

import flax.linen as nn
import jax
import numpy as np
import optax

import proact_jax as pj
from proact_jax import methods
from proact_jax.faults import campaign
from proact_jax.faults.injection import FaultSpace


class MyCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
    return nn.Dense(10)(x)


def train(model, x, y, steps=300, seed=0):
  params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, yb):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        model.apply({"params": p}, xb), yb).mean()
    g = jax.grad(loss)(params)
    u, opt = tx.update(g, opt)
    return optax.apply_updates(params, u), opt

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(x), 128, replace=False)
    params, opt = step(params, opt, x[idx], y[idx])
  return params


def main():
  ds = pj.load_dataset("digits")
  mean, std = pj.channel_stats(ds.x_train)
  x, x_test = pj.normalize(ds.x_train, mean, std), pj.normalize(ds.x_test, mean, std)
  # 500 validation images: ProAct's guard keeps the test drop < 1 point with 95 % confidence,
  # and its margin shrinks with the number of validation images (proact_jax/methods/guard.py)
  x_train, y_train, x_val, y_val = pj.split_train_val(x, ds.y_train, 500, seed=0)
  model = MyCNN()
  params = train(model, x_train, y_train)

  # Your model, as a network: a baseline (relu) and its variables {"params": ...}.
  net, variables = pj.function_network(lambda p, x: model.apply({"params": p}, x), params)
  val, test = pj.make_eval_set(x_val, y_val), pj.make_eval_set(x_test, ds.y_test)

  hardened = methods.proact(net, variables, x_train[:500], x_train, y_train, val,
                            methods.ProActConfig(last_epochs=5, layer_epochs=3,
                                                 guard_test_images=test.n),
                            eval_set=test, progress=False)
  print(f"sites {net.site_order(variables, x.shape[1:])}: baseline "
        f"{hardened.baseline_accuracy:.4f}, ProAct {hardened.clean_accuracy:.4f} "
        f"(memory overhead {100 * hardened.memory_overhead:.3f} %)")

  # A paired sweep: Q15.16 weight + threshold faults and transient activation faults.
  space = FaultSpace(collections=("params", "thresholds", "activations"))
  result = campaign.run_campaign(
      jax.random.PRNGKey(0), {"relu": (net, variables),
                              "proact": (hardened.model, hardened.variables)},
      test, [1e-6, 1e-5], 20, space=space, progress=False)
  print(result.format_table())


if __name__ == "__main__":
  main()
