"""Metrics that judge attributions (SPEC §3). Core: torch and numpy only.

* faithfulness: :func:`confidence_scores` (Average Drop, Increase in Confidence), :func:`win_percent`,
  :func:`deletion_insertion`;
* localisation: :func:`pointing_game`, :func:`energy_pointing_game`, :func:`iou_at`,
  :func:`instance_coverage`;
* sanity: :func:`cascading_randomization`, :func:`spearman`;
* LAM: :func:`diffusion_index`, :func:`gini`, :func:`mass_pixels`.
"""

from lamcam.metrics.diffusion import diffusion_index, gini, mass_pixels
from lamcam.metrics.faithfulness import (
    ConfidenceScores,
    average_drop,
    confidence_scores,
    deletion_insertion,
    increase_in_confidence,
    win_percent,
)
from lamcam.metrics.localisation import (
    energy_pointing_game,
    instance_coverage,
    iou_at,
    local_maxima,
    pointing_game,
)
from lamcam.metrics.sanity import cascading_randomization, spearman

__all__ = [
    "ConfidenceScores", "average_drop", "cascading_randomization", "confidence_scores",
    "deletion_insertion", "diffusion_index", "energy_pointing_game", "gini",
    "increase_in_confidence", "instance_coverage", "iou_at", "local_maxima", "mass_pixels",
    "pointing_game", "spearman", "win_percent",
]
