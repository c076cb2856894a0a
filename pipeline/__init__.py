"""Subimage Overlap Prediction: pretraining and fine-tuning for remote-sensing segmentation."""

__version__ = "0.1.0"
