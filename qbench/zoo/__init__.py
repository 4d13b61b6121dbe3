"""The toy world's models: small models trained on the procedural domain of
:mod:`qbench.toyworld` (a CLIP, a VAE, a UNet and a Flux-style transformer) that ship in
``weights/``, with their training, shipping, evaluation and quantization sweep.

Every number measured on these models is a *toy-world* number: it says how well a method
preserves a tiny model's behaviour on synthetic 32x32 scenes, not anything about real images.
"""
