"""Search: Optuna constrained evolutionary search, baselines, stored studies, Pareto
fronts and ``query`` ("the best subnet for device X under N ms").

Modules: :mod:`~ofa_search.search.encoding` (an arch as Optuna parameters),
:mod:`~ofa_search.search.evaluator` (predictor protocols, priced-once cache),
:mod:`~ofa_search.search.engines` (NSGA-II, random, once-for-all evolution),
:mod:`~ofa_search.search.evolution_sampler` (once-for-all's evolution as an Optuna sampler),
:mod:`~ofa_search.search.storage` / :mod:`~ofa_search.search.jobs` (persisted studies),
:mod:`~ofa_search.search.front` (Pareto fronts), :mod:`~ofa_search.search.query`.
"""

from __future__ import annotations

from ofa_search.search.context import DeviceContext, load_context
from ofa_search.search.encoding import ArchEncoding
from ofa_search.search.engines import DEFAULT_ENGINE, ENGINES, SearchResult, run_search
from ofa_search.search.evaluator import AccuracyModel, CachedEvaluator, Evaluation, LatencyModel
from ofa_search.search.evolution_sampler import OFAEvolutionSampler
from ofa_search.search.front import (
    Front,
    FrontPoint,
    build_front,
    build_front_for,
    pareto_front,
)
from ofa_search.search.jobs import default_storage, stored_search
from ofa_search.search.query import QueryEngine, QueryResult, query
from ofa_search.search.storage import open_storage, study_name

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "AccuracyModel",
    "ArchEncoding",
    "CachedEvaluator",
    "DeviceContext",
    "Evaluation",
    "Front",
    "FrontPoint",
    "LatencyModel",
    "OFAEvolutionSampler",
    "QueryEngine",
    "QueryResult",
    "SearchResult",
    "build_front",
    "build_front_for",
    "default_storage",
    "load_context",
    "open_storage",
    "pareto_front",
    "query",
    "run_search",
    "stored_search",
    "study_name",
]
