"""Evaluation: predictions, tagging metrics, boost-robustness scans, model cost, and the run report.

    predict          run a model over JetBatches -> softmax scores, labels       (predict.py)
    binary_metrics   accuracy, AUC, 1/eps_B at eps_S = 0.3, 0.5 with jet counts, lower limits, n_nonfinite (metrics.py)
    bootstrap_intervals  central 68% bootstrap intervals of those, vectorised over resamples      (metrics.py)
    validation_metrics   the trainer's val_loss, val_acc, val_auc; never raises on NaN/inf        (metrics.py)
    boost_scan       metrics vs boost beta of the constituents; invariance_score (boost_scan.py)
    count_flops      FLOPs per jet (multiply-add = 2); count_parameters          (flops.py)
    evaluate_model   one model's report entry; write_report: JSON, Markdown, PNGs (report.py, plots.py)
    run_labels       unique labels for runs; summarise_seeds: mean ± std over seeds; describe_data  (runs.py)
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
    N_BOOTSTRAP,
    SIGNAL_EFFICIENCIES,
    NonFiniteScoreWarning,
    UnreliableMetricWarning,
    background_efficiency,
    binary_metrics,
    bootstrap_intervals,
    rejection_lower_limit,
    roc,
    roc_grid,
    validation_metrics,
)
from jetkd.evaluate.plots import (
    boost_scan_figure,
    plot_boost_scan,
    plot_rejection_scan,
    plot_roc,
    plot_score_histograms,
    rejection_scan_figure,
    roc_figure,
    score_histogram_figure,
)
from jetkd.evaluate.predict import predict, stage_batches
from jetkd.evaluate.report import (
    deploy_notes,
    evaluate_model,
    markdown_table,
    read_report,
    summary_table,
    write_report,
)
from jetkd.evaluate.runs import describe_data, run_labels, summarise_seeds

__all__ = [
    "DEFAULT_AXIS",
    "DEFAULT_BETAS",
    "MIN_BACKGROUND_PASS",
    "N_BOOTSTRAP",
    "SIGNAL_EFFICIENCIES",
    "NonFiniteScoreWarning",
    "UnreliableMetricWarning",
    "background_efficiency",
    "binary_metrics",
    "boost_scan",
    "boost_scan_figure",
    "boost_transform",
    "bootstrap_intervals",
    "count_flops",
    "count_parameters",
    "deploy_notes",
    "describe_data",
    "evaluate_model",
    "flops_per_jet",
    "invariance_score",
    "markdown_table",
    "plot_boost_scan",
    "plot_rejection_scan",
    "rejection_scan_figure",
    "plot_roc",
    "plot_score_histograms",
    "predict",
    "read_report",
    "rejection_lower_limit",
    "roc",
    "roc_figure",
    "roc_grid",
    "run_labels",
    "score_histogram_figure",
    "stage_batches",
    "summarise_seeds",
    "summary_table",
    "validation_metrics",
    "write_report",
]
