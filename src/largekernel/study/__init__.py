"""``largekernel study``: where does kernel extent matter, and which family uses it best?

One command answers, on embedded data, the questions of the seed papers: NIFF
(Grabinski et al., TMLR 2024) asks how large the filters a network learns
actually are; DCLS (Khalfaoui-Hassani et al., ICLR 2023) whether learned
spacings beat fixed grids at equal parameters; FlexConv (Romero et al., ICLR
2022) what extent each layer wants and whether a model deploys at a resolution
it was not trained at; the FFT report (seed 003) whether FFT convolution keeps
the accuracy at a lower cost. The same architecture is trained with its
depthwise spatial convolution as each family — at each dataset's native
resolution and again at higher ones (MNIST-1D generated at lengths 40, 160,
640; the digits resampled from 8x8 to 32x32), where a small kernel sees less
and less of the pattern. The study writes ``report.md`` (claims table, sweep,
cross-resolution, per-point tables and figures) and ``results.json``.

Modules: :mod:`~largekernel.study.plan` (what is trained),
:mod:`~largekernel.study.runs` (one run), :mod:`~largekernel.study.cache`
(validated cache), :mod:`~largekernel.study.crossres` (cross-resolution),
:mod:`~largekernel.study.claims` (verdicts), :mod:`~largekernel.study.report`
(tables, report.md), :mod:`~largekernel.study.figures`,
:mod:`~largekernel.study.pipeline` (``run_study``), :mod:`~largekernel.study.cli`.
"""

from largekernel.study.claims import format_claims, judge_claims
from largekernel.study.cli import main
from largekernel.study.pipeline import run_study
from largekernel.study.plan import DATASETS, MNIST1D_BASELINES, VARIANTS, DatasetPlan, plan_runs, plan_transfers
from largekernel.study.report import aggregate, format_table, pareto_front

__all__ = ["main", "run_study", "DatasetPlan", "DATASETS", "VARIANTS", "MNIST1D_BASELINES", "plan_runs",
           "plan_transfers", "aggregate", "format_table", "pareto_front", "judge_claims", "format_claims"]
