"""The TE-VQGAN paper's experiment (W. Shin et al., "Exploration into
Translation-Equivariant Image Quantization", ICASSP 2023).

* :mod:`~vqzoo.experiments.te.quadrants`: quadrant composites with held-out
  (color, position) pairs, :class:`QuadrantsDataModule`;
* :mod:`~vqzoo.experiments.te.captions`: caption writer, parser and
  vocabulary (:class:`CaptionVocabulary`, :data:`VOCAB`);
* :mod:`~vqzoo.experiments.te.equivariance`: the equivariance rate on
  quadrant canvases and the stage-1 report (table 3);
* :mod:`~vqzoo.experiments.te.semantic`: the quadrant classifier and the
  text-to-image / image-to-text accuracies (table 1);
* :mod:`~vqzoo.experiments.te.runner`: the end-to-end reproduction behind
  ``benchmarks/reproduce_te.py`` (imported by its path).
"""

from vqzoo.experiments.te.captions import VOCAB, CaptionVocabulary
from vqzoo.experiments.te.equivariance import equivariance_rate, place_in_all_quadrants, stage1_report
from vqzoo.experiments.te.quadrants import HeldOutPairs, QuadrantsDataModule, QuadrantsDataset
from vqzoo.experiments.te.semantic import (
    QuadrantClassifier,
    QuadrantCropDataModule,
    image_to_text_accuracy,
    text_to_image_accuracy,
)

__all__ = [
    "VOCAB",
    "CaptionVocabulary",
    "HeldOutPairs",
    "QuadrantClassifier",
    "QuadrantCropDataModule",
    "QuadrantsDataModule",
    "QuadrantsDataset",
    "equivariance_rate",
    "image_to_text_accuracy",
    "place_in_all_quadrants",
    "stage1_report",
    "text_to_image_accuracy",
]
