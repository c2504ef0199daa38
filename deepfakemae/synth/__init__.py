"""Synthetic fakes: landmark-driven face manipulations and the bundled GRID demo dataset."""

from deepfakemae.synth.demo_data import (
    ALL_METHODS,
    DemoDataError,
    add_demo_data_arguments,
    build_demo_dataset,
    run_demo_data_command,
)
from deepfakemae.synth.swap import SelfBlendParams, SwapParams, self_blend, swap_region

__all__ = [
    "ALL_METHODS",
    "DemoDataError",
    "SelfBlendParams",
    "SwapParams",
    "add_demo_data_arguments",
    "build_demo_dataset",
    "run_demo_data_command",
    "self_blend",
    "swap_region",
]
