"""Elastic nested models (Nemotron Elastic): one parent, nested submodels per budget, routers that choose.

config = ElasticConfig(parent="parent", budgets=["0.5", "0.75"], data="text/", output_dir="run")
train_elastic(config, scores)                # or nemocompress.api.elastic_train(config), which scores
slice_run("run", "out", budget="0.5")        # a stock checkpoint, zero-shot
"""

from .model import ElasticModel, Schedule
from .router import Router
from .slice import RunMasks, SliceResult, budget_choice, slice_run
from .space import ElasticSpace, RouterAxis
from .train import ElasticConfig, ElasticError, ElasticResult, budgets_table, load_state, train_elastic

__all__ = [
    "ElasticConfig",
    "ElasticError",
    "ElasticModel",
    "ElasticResult",
    "ElasticSpace",
    "Router",
    "RunMasks",
    "RouterAxis",
    "Schedule",
    "SliceResult",
    "budget_choice",
    "budgets_table",
    "load_state",
    "slice_run",
    "train_elastic",
]
