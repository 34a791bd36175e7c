"""Study search space -> Tune param_space and search algorithm.

grid:   every factor is a `tune.grid_search`, crossed with the seeds; nuisance parameters take
        their `default` so the arms of the ablation differ only in the factors.
optuna: factors become categorical choices and nuisance parameters their distributions, all
        sampled by Optuna (TPE, random or brute force) with storage in the study directory;
        one seed (the sampler must not tune the seed).
A linked factor (levels that set several parameters together) is one grid axis or choice over
its level labels (`videos_per_batch=1, seq_len=64`: Optuna's categorical choices must be plain
values); `SearchSpace.expand` turns a trial's config back into the flat parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pitfalls.config import NUISANCE_DEFAULTS, Distribution, StudySpec, level_label


def _domain(dist: Distribution):
    from ray import tune

    if dist.distribution == "uniform":
        return tune.uniform(dist.low, dist.high)
    if dist.distribution == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if dist.distribution == "int":
        return tune.randint(int(dist.low), int(dist.high) + 1)
    return tune.choice(list(dist.choices))


def param_space(spec: StudySpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = dict(NUISANCE_DEFAULTS)
    nuisance = dict(spec.search_space.nuisance)
    linked = spec.search_space.linked
    factors = [(name, [level_label(v) for v in levels] if name in linked else list(levels))
               for name, levels in spec.search_space.factors]
    if spec.searcher.type == "grid":
        for name, levels in factors:
            space[name] = tune.grid_search(levels) if len(levels) > 1 else levels[0]
        for name, dist in nuisance.items():
            space[name] = dist.default
        space["seed"] = tune.grid_search(list(spec.seeds)) if len(spec.seeds) > 1 else spec.seeds[0]
    else:
        for name, levels in factors:
            space[name] = tune.choice(levels) if len(levels) > 1 else levels[0]
        for name, dist in nuisance.items():
            space[name] = _domain(dist)
        space["seed"] = spec.seeds[0]
    return space


def optuna_storage_url(study_dir: Path, storage: str | None = None) -> str:
    """The Optuna storage: the given URL (e.g. PostgreSQL, shared with MLflow's database
    server), else $PITFALLS_OPTUNA_STORAGE, else a sqlite file in the study directory.

    A PostgreSQL password in the URL is moved to this process's PGPASSWORD (libpq reads it;
    `pitfalls.sweep.credentials`): Tune pickles the searcher, storage URL included, into the
    study directory, and a password must not end up there. A resumed study needs the URL (or
    PGPASSWORD) again.
    """
    import os

    from pitfalls.sweep.credentials import OPTUNA_STORAGE_ENV, move_credentials

    url = (storage or os.environ.get(OPTUNA_STORAGE_ENV)
           or f"sqlite:///{(study_dir / 'optuna.db').resolve()}")
    return move_credentials(url)


def search_algorithm(spec: StudySpec, study_dir: Path, storage: str | None = None,
                     study_id: str | None = None):
    """None for grid (Tune's variant generator), else a `StudyOptunaSearch` on
    `optuna_storage_url`, whose Optuna study is named by the study's id (`state.json`), not its
    name: a study deleted or moved and run again never continues an old Optuna study that a
    shared database still holds under that name."""
    if spec.searcher.type == "grid":
        return None
    import optuna

    from pitfalls.sweep.optuna_search import StudyOptunaSearch

    seed = spec.searcher.seed
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "brute_force": lambda: optuna.samplers.BruteForceSampler(seed=seed),
    }[spec.searcher.sampler]()
    storage = optuna.storages.RDBStorage(optuna_storage_url(study_dir, storage))
    return StudyOptunaSearch(sampler=sampler, storage=storage, study_name=study_id or spec.name,
                             metric=spec.metric.selection, mode=spec.metric.mode)
