"""Sampling: the KV-cache reasoning-then-image sampler with CFG and its teacher-forced scorer."""

from jaxgen.sampling.sampler import Rollout, SampleOptions, sample
from jaxgen.sampling.scoring import sequence_logprobs, sequence_logprobs_and_entropy

__all__ = ["Rollout", "SampleOptions", "sample", "sequence_logprobs",
           "sequence_logprobs_and_entropy"]
