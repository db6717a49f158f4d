import jax
import jax.numpy as jnp
import pytest

import proact_jax as pj

# Parameter counts at 10 classes. AlexNet is the toolbox's exactly; the others are our CIFAR
# variants, computed by hand from their layer lists (see comments).
COUNTS = {
    "alexnet": 23_272_266,
    "small_cnn": (3 * 3 * 1 * 16 + 16) + (3 * 3 * 16 * 32 + 32) + (4 * 4 * 32 * 64 + 64)
                 + (64 * 10 + 10),
    # 13 conv (with bias) + 13 BN (scale, bias) + dense 512->10.
    "vgg16": sum(9 * a * b + b + 2 * b for a, b in [
        (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
        (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]) + 5130,
    "resnet20": 272_474,   # the well-known CIFAR ResNet-20 count with 1x1 projection shortcuts
    "resnet50": 23_520_842,  # torchvision's ResNet-50 (23.5M without fc) with a 3x3 stem
}
SHAPES = {"small_cnn": (8, 8, 1)}
N_SITES = {"alexnet": 7, "small_cnn": 3, "vgg16": 13, "resnet20": 19, "resnet50": 49}


def _abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_and_sites(name):
  shape = SHAPES.get(name, (32, 32, 3))
  model = pj.create_model(name, 10, kind="smooth", granularity="hybrid")
  v = _abstract_init(model, shape)
  assert pj.count(v["params"]) == COUNTS[name]
  order = pj.site_order(model, shape)
  assert len(order) == N_SITES[name]
  assert sorted(order) == sorted(pj.site_names(v[pj.THRESHOLDS]))
  # Hybrid: only the last site in forward order is neuron-wise.
  shapes = {s: pj.get_site(v[pj.THRESHOLDS], s).shape for s in order}
  assert all(shapes[s] == () for s in order[:-1])
  assert len(shapes[order[-1]]) >= 1


def test_site_order_is_forward_order():
  assert pj.site_order(pj.create_model("alexnet"), (32, 32, 3)) == [f"act{i}" for i in range(7)]
  order = pj.site_order(pj.create_model("resnet20"), (32, 32, 3))
  assert order[0] == "stem_act" and order[-1] == "stage2_block2/act1"
  assert order.index("stage0_block2/act1") < order.index("stage1_block0/act0")
  vgg = pj.site_order(pj.create_model("vgg16"), (32, 32, 3))
  assert vgg == [f"act{i}" for i in range(13)]  # not the name-sorted act0, act1, act10, ...


def test_memory_overhead_hybrid_alexnet():
  hybrid = _abstract_init(pj.create_model("alexnet", 10, "smooth", "hybrid"), (32, 32, 3))
  neuron = _abstract_init(pj.create_model("alexnet", 10, "smooth", "neuron"), (32, 32, 3))
  layer = _abstract_init(pj.create_model("alexnet", 10, "zero", "layer"), (32, 32, 3))
  assert pj.memory_overhead(hybrid) == pytest.approx((6 + 4096) / 23_272_266)
  assert round(100 * pj.memory_overhead(hybrid), 4) == 0.0176
  assert pj.memory_overhead(layer) == pytest.approx(7 / 23_272_266)
  assert pj.memory_overhead(neuron) > 10 * pj.memory_overhead(hybrid)


def test_batchnorm_train_and_eval_modes():
  model = pj.create_model("resnet20", 10)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  v = model.init(jax.random.PRNGKey(0), x)
  _, state = model.apply(v, x, train=True, mutable=["batch_stats"])
  changed = jax.tree_util.tree_map(lambda a, b: bool((a != b).any()), v["batch_stats"],
                                   state["batch_stats"])
  assert any(jax.tree_util.tree_leaves(changed))
  y1 = model.apply(v, x)  # eval mode: no mutation needed
  assert y1.shape == (4, 10)


def test_any_number_of_classes():
  v = _abstract_init(pj.create_model("alexnet", 100), (32, 32, 3))
  assert v["params"]["Dense_2"]["kernel"].shape == (4096, 100)


def test_unknown_model_and_bad_classes():
  with pytest.raises(ValueError, match="unknown model 'lenet'"):
    pj.create_model("lenet")
  with pytest.raises(ValueError, match="num_classes"):
    pj.create_model("alexnet", 1)
  with pytest.raises(ValueError, match="unknown granularity"):
    pj.create_model("alexnet", 10, "smooth", "channel")
