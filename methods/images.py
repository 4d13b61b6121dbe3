"""``images``: images another tool generated, scored by ``qbench score`` (no model is run).

    qbench score results/schnell/int4/MJHQ --model flux-schnell --prompts FILE --label nunchaku-int4

:mod:`qbench.scoring` reads the folder or JSON file (:mod:`qbench.score_read`: qbench's own image
folders, nunchaku's ``<name>.png`` folders, ModelOpt's eval JSON, or ``{"prompt_id", "image_path"}``
records), scores the images with the model's metrics and stores the run under this method:
``label`` names it in tables, ``source`` / ``layout`` / ``entry`` say where the images came from and
``digest`` (set by ``qbench score``) is the content of the images, file by file (sha256), so two
different folders never look like one configuration. Mode ``external``: qbench did not generate
the images, so it has no latency, memory or size to report (stored as n/a, said so).
"""
from __future__ import annotations

from typing import Any

from qbench.api import Capabilities, Method
from qbench.errors import ConfigError


def _options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("label", "str", None, "name of the scored images in tables (default: the folder's or file's name)"),
        Opt("source", "str", None, "set by qbench score: the folder or JSON file the images were read from"),
        Opt("layout", "str", None, "set by qbench score: the reader (qbench, nunchaku, modelopt-json, records)"),
        Opt("entry", "str", None, "set by qbench score: the model name inside a ModelOpt eval JSON"),
        Opt("digest", "str", None, "set by qbench score: sha256 over the images' (prompt id, file sha256) pairs"),
    )


class Images(Method):
    name = "images"
    description = "images made elsewhere, read from a folder or JSON file and scored as they are (qbench score)"
    OPTIONS = _options()
    #: no model, no layers, no latency: only `qbench score` makes such a run
    CAPABILITIES = Capabilities(
        exportable=False, export_hint="the images came from outside qbench; there is no model to export", runs_from_config=False,
        latency_kind="n/a: images made elsewhere (qbench did not generate them, so it measured no latency)")

    def __init__(self, cfg):
        super().__init__(cfg)
        if not self.options.get("digest"):
            raise ConfigError("method 'images' is what `qbench score DIR --model M --prompts SPEC` stores; "
                              "it cannot run from `qbench run` or a sweep (there is no model to run)")

    @property
    def mode(self) -> str:
        return "external"

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "bits": None, "mode": self.mode,
                "options": {k: self.options.get(k) for k in ("label", "source", "layout", "entry", "digest")}}

    @property
    def label(self) -> str:
        return f"images {self.options.get('label') or 'scored'}"
