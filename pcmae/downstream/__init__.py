from pcmae.downstream.point_classifier import PointClassifier

__all__ = ["PointClassifier"]
