"""The training core must run on a GPU box that has torch and timm but no Ray, Optuna, MLflow
or pydantic; study validation must not pay for torch; and the package has no import cycle."""

import subprocess
import sys

from tests.conftest import ROOT

_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'ray', 'optuna', 'mlflow', 'pydantic', 'pydantic_core'}:
            raise ImportError(f'{name} is not installed on this machine')
sys.meta_path.insert(0, Block())
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)


def test_core_modules_import_no_ray_optuna_or_mlflow():
    code = ("import sys, pitfalls.train, pitfalls.models, pitfalls.data, pitfalls.config; "
            "print(sorted(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_trial_trains_where_ray_optuna_mlflow_and_pydantic_are_missing():
    """What a benchmark on a bare GPU box does: build the study objects directly and train."""
    code = _BLOCK + """
from pitfalls.config import (BudgetSpec, DatasetSpec, MetricSpec, ModelSpec, ResourceSpec,
                             SearcherSpec, SearchSpace, StudySpec, TaskSpec, TrialConfig, TrialParams)
from pitfalls.data import SyntheticOptions
from pitfalls.train import train
study = StudySpec(name="bare", dataset=DatasetSpec("synthetic", SyntheticOptions(
                      num_videos=4, val_videos=1, frame_size=16, min_phase_frames=4, max_phase_frames=6)),
                  task=TaskSpec(), model=ModelSpec(), budget=BudgetSpec(1, 2), resources=ResourceSpec(),
                  searcher=SearcherSpec(), seeds=(0,), metric=MetricSpec(),
                  search_space=SearchSpace("bare", (("norm", ("group",)),), ()))
params = TrialParams(norm="group", frozen_stages=1, seq_len=4, videos_per_batch=2, seed=0)
print(round(train(TrialConfig(study, params))["train_loss"], 3) > 0)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("True")


def test_validating_a_study_imports_neither_torch_nor_timm():
    code = ("import sys; from pitfalls.config import load_study; "
            "load_study('studies/quickstart.yaml'); load_study('studies/cpu/cpu_backbones.yaml'); "
            "print(sorted(m for m in ('torch', 'timm', 'ray', 'mlflow') if m in sys.modules))")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_module_of_the_package_imports_itself_through_a_cycle():
    """Layers are checked by import-linter (.ci/run); here, within the layers too: the package's
    import graph (module-level and deferred imports alike) has no cycle."""
    import grimp

    graph = grimp.build_graph("pitfalls")
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in index} for m in modules}
    # a package's __init__ importing its own submodules is not a cycle (import order only)
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in edges.items()}
    cycles, stack, state = [], [], {}

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in edges[m]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
