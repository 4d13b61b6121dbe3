"""``python -m qbench ...`` (what ``accelerate launch -m qbench run ...`` and
``torchrun --nproc_per_node N -m qbench run ...`` start on every rank)."""
import sys

from qbench.cli import main

sys.exit(main())
