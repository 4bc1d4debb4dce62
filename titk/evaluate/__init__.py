"""Evaluation: prompt suites, the sampler, scorers and the scorecard."""
