"""The lottery-ticket demo: LeNet-300-100 IMP with rewinding on Fashion-MNIST, beside random reinit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunelab.training import TrainConfig

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec


def demo_spec(
    data: str = "fashion-mnist", rounds: int = 12, epochs: int = 3, *, device: str = "auto"
) -> ExperimentSpec:
    """Frankle & Carbin's LeNet-300-100 setup: Adam 1.2e-3, batch 60, 20% per layer and round (10%
    for the output layer), rewinding to theta_0, with a random-reinitialisation control. ``device``
    (not part of the id) says where it trains."""
    from prunelab.experiments.spec import ExperimentSpec, PruneSpec, TreatmentSpec

    return ExperimentSpec(
        model="lenet-300-100",
        data=data,
        name=f"demo: lenet-300-100 IMP + rewinding on {data}",
        train=TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, epochs=epochs, device=device),
        pruning=PruneSpec(
            method="magnitude", scope="layerwise", rate=0.2, rounds=rounds, output_rate_factor=0.5
        ),
        treatment=TreatmentSpec(kind="rewind"),
        controls=("reinit",),
    )
