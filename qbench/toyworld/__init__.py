"""The toy world's domain: a procedural text-to-image world with exact ground truth.

* ``render`` — scenes (one shape, or two side by side), the deterministic renderer, the caption
  grammar and image degradations;
* ``splits`` — TRAIN / CALIB / TEST by scene; ``prompts`` — the ``toy*`` prompt sets;
* ``checker`` — the rule-based reader of images (``toy-acc``);
* ``clip`` — where the shipped toy CLIP is and how the CLIP metrics load it.

Layering (``tests/test_layering.py``): this package imports neither ``qbench.metrics`` nor
``qbench.zoo``; ``qbench.metrics`` imports it (toy-acc, fd-toyclip, the toy CLIP) and
``qbench.zoo`` (the trained models: training, shipping, evaluation) imports both. The shipped
weights stay in ``qbench/zoo/weights`` (:data:`WEIGHTS_DIR`).
"""
from __future__ import annotations

import os

#: the shipped toy models' weights (package data of ``qbench.zoo``)
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo", "weights")
