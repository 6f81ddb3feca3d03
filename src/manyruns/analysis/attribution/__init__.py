"""Data attribution fitted on populations and judged by the linear datamodeling score (docs/attribution.md)."""

from .datamodels import DatamodelOptions, DatamodelResult, datamodels, fit_diffmeans, fit_ridge
from .lasso import fit_lasso
from .neighbours import fit_neighbour_ridge
from .lds import GroundTruth, LdsOptions, LdsResult, ground_truth, lds, lds_from_arrays, spearman_columns
from .outputs import OUTPUTS, model_output, outputs

__all__ = [
    "OUTPUTS", "DatamodelOptions", "GroundTruth", "ground_truth", "DatamodelResult", "LdsOptions", "LdsResult", "datamodels", "fit_diffmeans",
    "fit_lasso", "fit_neighbour_ridge", "fit_ridge", "lds", "lds_from_arrays", "model_output", "outputs", "spearman_columns",
]
