"""Evaluation: metrics (AUC with patient-bootstrap CI, operating points, calibration),
thresholds, plots, the report, published results, and dataset exploration."""
