"""Sampling on the device, vectorized over the batch (see sampler.py for the order of
transforms, random_stream.py for per-request seeded reproducibility)."""

from ferrite_server.engine.sampling.random_stream import stream_uniform
from ferrite_server.engine.sampling.sampler import sample, sampling_scores
from ferrite_server.engine.sampling.state import SampleResult, SequenceSamplingState

__all__ = ["SampleResult", "SequenceSamplingState", "sample", "sampling_scores", "stream_uniform"]
