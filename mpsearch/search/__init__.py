"""Search: budgets, the exact ILP, the frontier, Optuna refinement, baselines and verification."""

from mpsearch.search.baselines import (
    HAWQ_V3_WEIGHTS, EvaluatedPlan, RandomSearchResult, hawq_v3_ilp, random_search, uniform_plan,
)
from mpsearch.search.compare import BaselineComparison, ComparisonSummary, compare_with_baselines
from mpsearch.search.budget import BUDGET_METRICS, Budget, as_budgets, parse_budget, resolve_budget
from mpsearch.search.frontier import FrontierPoint, ilp_frontier, pareto_front
from mpsearch.search.ilp import (
    CompiledSearch, InfeasibleBudgetError, SolveResult, plan_totals, resolve_budgets, solve_ilp,
)
from mpsearch.search.problem import Transitions, graph_ties
from mpsearch.search.refine import OptunaResult, RefinedPoint, optuna_refine
from mpsearch.search.verify import Verification, rank_agreement, verify_points

__all__ = [
    "BUDGET_METRICS", "BaselineComparison", "Budget", "ComparisonSummary", "HAWQ_V3_WEIGHTS", "CompiledSearch", "EvaluatedPlan", "FrontierPoint", "InfeasibleBudgetError",
    "OptunaResult", "RandomSearchResult", "RefinedPoint", "SolveResult", "Transitions", "Verification",
    "as_budgets", "compare_with_baselines", "graph_ties", "hawq_v3_ilp", "ilp_frontier", "optuna_refine", "pareto_front", "parse_budget",
    "plan_totals", "random_search", "rank_agreement", "resolve_budget", "resolve_budgets", "solve_ilp",
    "uniform_plan", "verify_points",
]
