from pcmae.downstream.part_segmentation import PointPartSegmenter
from pcmae.downstream.point_classifier import PointClassifier

__all__ = ["PointClassifier", "PointPartSegmenter"]
