"""Evaluation: predictions, tagging metrics, boost-robustness scans, model cost, and the run report.

    predict          run a model over JetBatches -> softmax scores, labels       (predict.py)
    binary_metrics   accuracy, AUC, 1/eps_B at eps_S = 0.3, 0.5 with jet counts (metrics.py)
    boost_scan       metrics vs boost beta of the constituents; invariance_score (boost_scan.py)
    count_flops      FLOPs per jet (multiply-add = 2); count_parameters          (flops.py)
    evaluate_model   one model's report entry; write_report: JSON, Markdown, PNGs (report.py, plots.py)
"""

from jetkd.evaluate.boost_scan import (
    DEFAULT_AXIS,
    DEFAULT_BETAS,
    boost_scan,
    boost_transform,
    invariance_score,
)
from jetkd.evaluate.flops import count_flops, count_parameters, flops_per_jet
from jetkd.evaluate.metrics import (
    MIN_BACKGROUND_PASS,
    SIGNAL_EFFICIENCIES,
    UnreliableMetricWarning,
    background_efficiency,
    binary_metrics,
    roc,
    roc_grid,
)
from jetkd.evaluate.plots import plot_boost_scan, plot_roc, plot_score_histograms
from jetkd.evaluate.predict import predict, stage_batches
from jetkd.evaluate.report import (
    deploy_notes,
    evaluate_model,
    markdown_table,
    read_report,
    write_report,
)

__all__ = [
    "DEFAULT_AXIS",
    "DEFAULT_BETAS",
    "MIN_BACKGROUND_PASS",
    "SIGNAL_EFFICIENCIES",
    "UnreliableMetricWarning",
    "background_efficiency",
    "binary_metrics",
    "boost_scan",
    "boost_transform",
    "count_flops",
    "count_parameters",
    "deploy_notes",
    "evaluate_model",
    "flops_per_jet",
    "invariance_score",
    "markdown_table",
    "plot_boost_scan",
    "plot_roc",
    "plot_score_histograms",
    "predict",
    "read_report",
    "roc",
    "roc_grid",
    "stage_batches",
    "write_report",
]
