"""The package's shape: one-way imports between layers, no cycle, small files, stable public names.

Layers, earliest first (a module may import only from its own layer or an earlier one):

  version -> core -> transform -> data -> models -> training -> faults -> methods -> report -> commands

``core`` is the model-side core (activations, thresholds, profile, distill, evaluate);
``transform`` turns any JAX function's ReLUs into clipped activations (a jaxpr interpreter); ``training``
(loop, checkpoints, a checkpoint's data) needs data and models; faults come before methods
because FT-ClipAct is scored by fault campaigns. Every import counts, including those inside
functions. ``proact_jax/__init__.py`` is the flat facade: it may re-export from any layer, and no
module inside the package imports it.
"""

import ast
import pathlib

import pytest

import proact_jax as pj

ROOT = pathlib.Path(pj.__file__).parent
LAYERS = ("version", "core", "transform", "data", "models", "training", "faults", "methods", "report",
          "commands")
MAX_LINES = 400

# `import proact_jax as pj` exposes exactly these names (unchanged by the 0.2 layout).
PUBLIC = set("""
    ACT_STATS Activation ClippedAct DATASETS Dataset EvalSet FaultSpace GRANULARITIES KINDS MODELS
    NumberFormat THRESHOLDS activation_fn augment channel_stats clip_to_threshold clip_to_zero
    count create_model evaluate flip_bits flip_n get_format get_site iterate_batches kd_loss
    kd_loss_jit kl_divergence l2_thresholds layer_max load_checkpoint load_dataset make_eval_set
    memory_overhead merge normalize predict profile_max quantize_tree register_model relu
    save_checkpoint set_site site_mask site_names site_optimizer site_order smooth_clip split
    split_train_val stuck_at subset thresholds_from_profile toolbox_floor_flips
""".split()) | {"ClippedFunction", "clip_activations",  # added in 0.2 (issue 13)
               "Network", "function_network"} | {
                   "export_checkpoint", "export_thresholds", "import_checkpoint",
                   "import_thresholds", "read_thresholds"}  # issue 14

# The 0.1 flat module paths, removed in 0.2 (no alias modules).
OLD_MODULES = ("activation_faults", "activation_stats", "activations", "campaign", "checkpoint",
               "cifar_archives", "data", "dataset", "distill", "evaluate", "fault_sampling",
               "faults", "formats", "image_folder", "pipeline", "plots", "profile", "report",
               "results", "stats", "table_format", "thresholds", "train", "trial", "workflow")


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
  """The package modules ``name`` imports anywhere in its file (functions included)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      if t == "proact_jax" or t.startswith("proact_jax."):
        while t not in MODULES:  # `import proact_jax.a.b` of a name: the module holding it
          t = t.rpartition(".")[0]
        found.add(t)
  found.discard(name)
  return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
  first = name.split(".")[1]
  if first == "cli":
    return LAYERS.index("commands")
  assert first in LAYERS, f"{name} is in no layer; add its package to LAYERS"
  return LAYERS.index(first)


def test_every_module_is_in_a_layer():
  for name in MODULES:
    if name != "proact_jax":
      _layer(name)


def test_imports_only_point_back_along_the_flow():
  bad = [f"{a} ({LAYERS[_layer(a)]}) imports {b} ({LAYERS[_layer(b)]})"
         for a, deps in GRAPH.items() if a != "proact_jax"
         for b in deps if b != "proact_jax" and _layer(b) > _layer(a)]
  assert not bad, "\n".join(bad)


def test_no_module_imports_the_facade():
  assert not [a for a, deps in GRAPH.items() if "proact_jax" in deps]


def test_no_import_cycle():
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for m in sorted(GRAPH[n]):
      if state.get(m) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
      if m not in state:
        visit(m)
    stack.pop()
    state[n] = "done"

  for n in sorted(GRAPH):
    if n not in state:
      visit(n)


def test_registry_does_not_import_what_registers_into_it():
  registry = "proact_jax.models.registry"
  registering = {n for n, p in MODULES.items() if "register_model(" in p.read_text()
                 and n.startswith("proact_jax.models.") and n != registry}
  assert registering  # the architectures register themselves ...
  assert not GRAPH[registry] & registering  # ... and the registry does not import them
  assert registering <= GRAPH["proact_jax.models"]  # the package does


def test_commands_do_not_import_each_other():
  shared = {"proact_jax.commands", "proact_jax.commands.args"}
  bad = [(a, b) for a, deps in GRAPH.items() if a.startswith("proact_jax.commands.")
         for b in deps if b.startswith("proact_jax.commands.") and b not in shared]
  assert not bad


def test_files_are_small():
  long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
  assert not {n: k for n, k in long.items() if k > MAX_LINES}


def test_public_names_unchanged():
  assert set(pj.__all__) == PUBLIC
  assert all(hasattr(pj, n) for n in PUBLIC)
  assert pj.__version__


def test_old_flat_module_paths_are_gone():
  # Checked on disk: an editable install of another checkout can still map the old names.
  left = [old for old in OLD_MODULES if (ROOT / f"{old}.py").exists()]
  assert not left
  assert {"data", "faults", "report"} <= {p.name for p in ROOT.iterdir() if p.is_dir()}


def test_the_pipelines_committed_files_are_not_ignored_by_git():
  """experiments/pipeline_records.py commits RESULTS/hardened/NAME.thresholds.npz and a small
  baseline's RESULTS/baseline/model.npz (they rebuild a lost work directory): `*.npz` is
  ignored, so each needs its own exception in .gitignore (model.npz had none until 2026-12-06)."""
  import shutil
  import subprocess
  repo = ROOT.parent
  if shutil.which("git") is None or not (repo / ".git").exists():
    pytest.skip("not a git checkout")
  def ignored(path):
    return subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=repo).returncode == 0
  assert ignored("runs/x/base/model.npz") and ignored("results/x/other.npz")  # the rule is live
  for path in ("results/cifar10_resnet20/baseline/model.npz",
               "results/cifar10_alexnet/seeds/s9/hardened/proact.thresholds.npz"):
    assert not ignored(path), path
