"""The package's layout: imports point one way, and family-specific code stays in its place."""

import ast
import pathlib
import re

from bigbigan_jax import inception

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bigbigan_jax"
REPO = PACKAGE.parent


def _module_name(path):
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _import_graph() -> dict:
  """{module: set of bigbigan_jax modules it imports}, at module and function level alike."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
      for target in targets:
        while target and target not in modules:
          target = target.rpartition(".")[0]
        if target and target != name and target.startswith("bigbigan_jax"):
          edges.add(target)
    graph[name] = edges
  # A package's __init__ is not an edge of its own submodules' imports.
  return {m: {t for t in e if not m.startswith(t + ".")} for m, e in graph.items()}


def test_the_import_graph_has_no_cycle():
  graph = _import_graph()
  assert "bigbigan_jax.trainers.bigan" in graph["bigbigan_jax.trainers"]
  visiting, done = [], set()

  def visit(module):
    if module in done:
      return
    assert module not in visiting, " -> ".join(visiting[visiting.index(module):] + [module])
    visiting.append(module)
    for target in sorted(graph[module]):
      visit(target)
    visiting.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


def test_dependencies_point_one_way():
  graph = _import_graph()
  # common <- bigbigan <- bigan; inference needs no training code.
  assert "bigbigan_jax.trainers.bigan" not in graph["bigbigan_jax.trainers.bigbigan"]
  assert not {t for t in graph["bigbigan_jax.trainers.common"] if t.startswith(
      "bigbigan_jax.trainers.")}
  allowed = {"bigbigan_jax.models", "bigbigan_jax.checkpoint", "bigbigan_jax.sharding",
             "bigbigan_jax.config_lib", "bigbigan_jax.input_pipeline", "bigbigan_jax.errors",
             "bigbigan_jax.paths"}
  assert graph["bigbigan_jax.inference"] <= allowed, graph["bigbigan_jax.inference"]


def test_only_the_bigan_trainer_and_models_know_the_bigan_family():
  allowed = ("trainers/bigan.py", "models/", "evaluators/bigan_nn1.py")
  for path in PACKAGE.rglob("*.py"):
    relative = str(path.relative_to(PACKAGE))
    if relative.startswith(allowed):
      continue
    text = path.read_text()
    assert "bigan_mlp" not in text and "method_of" not in text, relative


def test_no_spec_citations_or_dates_in_code_configs_and_tests():
  date = re.compile(r"20\d\d-[01]\d-[0-3]\d")
  # The FID Inception weights' file names carry their release date; nothing else may.
  weights_release = date.search(inception.WEIGHTS_FILE).group()
  for folder in ("bigbigan_jax", "configs", "launch", "tests"):
    for path in (REPO / folder).rglob("*"):
      if path.suffix not in (".py", ".sh", ".sbatch") or path.name == "test_layout.py":
        continue
      text = path.read_text()
      assert not re.search(r"\bSPEC\b", text), path
      assert not date.search(text.replace(weights_release, "")), path
