"""The contract between the harness and a method; everything a method may import of the harness
besides benchmark.features (frozen backbones, nearest-neighbour search). It imports nothing of the
harness but benchmark.errors (tests/test_imports.py)."""

from benchmark.api.adapter import Adapter
from benchmark.api.bases import FeatureAdapter, TrainedAdapter
from benchmark.api.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from benchmark.api.records import (ABNORMAL_ONLY, ALL_NORMAL, NORMAL, NORMAL_ABNORMAL, ZERO_SHOT, ImageBatch, Prediction, ReferenceSet, RunContext,
                                   TrainingData)
from benchmark.api.training import resumable_epochs
from benchmark.errors import GadbenchError, MissingWeights

__all__ = ["ABNORMAL_ONLY", "ALL_NORMAL", "Adapter", "FeatureAdapter", "TrainedAdapter", "Preprocessing", "IMAGENET_MEAN", "IMAGENET_STD", "NORMAL",
           "NORMAL_ABNORMAL", "ZERO_SHOT", "ImageBatch", "Prediction", "ReferenceSet", "RunContext", "TrainingData",
           "resumable_epochs", "GadbenchError", "MissingWeights"]
