"""The project objective (``solvers/objective.py``) of any layout without copies, for the solvers that optimise
something else (``moetuner``, ``exflow``), so their results can be compared on one scale."""

from __future__ import annotations

from typing import Any

import numpy as np

from solvers.problem import PlacementProblem, SolveOptions


def project_terms(problem: PlacementProblem, options: SolveOptions, rows_LP: np.ndarray) -> dict[str, Any]:
    """The project's objective and its terms for a layout (for comparison with the other solvers)."""
    from placer.core.placement import Placement as P_
    from solvers.instance import build_instance
    from solvers.objective import gpu_from_placement, objective_name, terms

    inst = build_instance(problem, SolveOptions(params={k: v for k, v in options.params.items()
                                                        if k in ("intra_weight", "inter_weight", "balance_weight")}
                                               | {"max_imbalance": 0}))
    placement = P_(rows_LP, inst.G, inst.E, inst.N)
    t = terms(inst, gpu_from_placement(inst, placement))
    return {"cost": {"objective_name": objective_name(inst), "objective": float(t.value), "terms": t.to_dict(inst)}}
