"""``python -m qbench ...`` (what ``accelerate launch -m qbench run ...`` and
``torchrun --nproc_per_node N -m qbench run ...`` start on every rank).

Only when run as the program: importing ``qbench.__main__`` (as a tampered export once made
``load_quantized`` do) must not run the command line inside the importer."""
import sys

if __name__ == "__main__":
    from qbench.cli import main

    sys.exit(main())
