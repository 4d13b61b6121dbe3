"""The toy world: a procedural text-to-image domain with exact ground truth, and small models
trained on it (a CLIP, a VAE, a UNet and a Flux-style transformer) that ship in ``weights/``.

Every number measured on these models is a *toy-world* number: it says how well a method
preserves a tiny model's behaviour on synthetic 32x32 scenes, not anything about real images.
"""
