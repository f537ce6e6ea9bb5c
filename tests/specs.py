"""Small experiment specs the tests share (imported as ``from specs import tiny``)."""

from prunelab.experiments import ExperimentSpec, PruneSpec
from prunelab.training import TrainConfig


def tiny(**overrides) -> ExperimentSpec:
    """LeNet-300-100 on the synthetic task, one epoch, one round at 50%: seconds to run."""
    values = dict(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(epochs=1, batch_size=64),
        pruning=PruneSpec(rate=0.5, rounds=1),
    )
    return ExperimentSpec(**(values | overrides))
