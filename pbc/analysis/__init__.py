"""The ``analyse`` stage and its parts: the ArviZ adapter (:mod:`.inference_data`, the only
place pbc imports ArviZ), threshold rules (:mod:`.thresholds`) and the stage
(:mod:`.stage`); the posterior predictive and its calibration (:mod:`.predictive`)."""

from pbc.analysis.inference_data import read_posterior, summary, to_inference_data, write_netcdf
from pbc.analysis.predictive import calibration, evaluate_predictive, predictive_probs
from pbc.analysis.stage import LayerAnalysis, ThresholdError, analyse, parse_thresholds

__all__ = ["LayerAnalysis", "ThresholdError", "analyse", "calibration", "evaluate_predictive",
           "parse_thresholds", "predictive_probs", "read_posterior", "summary",
           "to_inference_data", "write_netcdf"]
