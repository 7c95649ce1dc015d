"""RobustnessReport: the accuracy grid of several models under attacks, with how it was obtained."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .._io import atomic_path, dumps_json, write_text
from ..version import __version__
from .figures import figures
from .html import to_html
from .markdown import body_markdown, lead_markdown
from .schema import SCHEMA_VERSION, WARNINGS, suspect_curves, validate

__all__ = ["RobustnessReport"]


@dataclass
class RobustnessReport:
    """Accuracy grid ``accuracy[model][attack][i]`` at ``eps[i]`` and how it was obtained."""

    accuracy: dict
    eps: list
    attacks: list
    provenance: dict
    bits: dict = field(default_factory=dict)
    lipschitz: dict = field(default_factory=dict)
    lipschitz_bits: Optional[int] = None
    transfer: Optional[dict] = None
    suspect: list = field(default_factory=list)
    critical: Optional[dict] = None
    #: extra Markdown sections ``{"title", "markdown"}`` shown after the header (e.g. guard's stages);
    #: one with ``"lead": True`` opens the report, above the plots (e.g. guard's decision)
    sections: list = field(default_factory=list)
    #: size against robustness per model: ``{"name", "bytes", "robust", "low", "high", "chosen"}``
    #: (robust accuracy with its 95% interval), drawn as the first plot
    tradeoff: Optional[list] = None

    @classmethod
    def build(cls, **kwargs) -> "RobustnessReport":
        report = cls(**kwargs)
        report.suspect = suspect_curves(report.accuracy, report.eps)
        report.critical = report._critical()
        return report

    @classmethod
    def from_dict(cls, data: dict) -> "RobustnessReport":
        """The report a :meth:`to_dict` (a ``report.json``) describes, validated against :data:`SCHEMA`."""
        validate(data)
        return cls(accuracy=data["accuracy"], eps=data["eps"], attacks=data["attacks"], provenance=data["provenance"],
                   bits=data.get("bits") or {}, lipschitz=data.get("lipschitz") or {},
                   lipschitz_bits=data.get("lipschitz_bits"), transfer=data.get("transfer"),
                   suspect=list(data["suspect"]), critical=data.get("critical"),
                   sections=list(data.get("sections") or []), tradeoff=data.get("tradeoff"))

    @classmethod
    def load(cls, path) -> "RobustnessReport":
        """Read a ``report.json`` written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ----------------------------------------------------------------- analysis
    def bits_models(self) -> list[str]:
        """The models with a weight bit width, fewest bits first."""
        return sorted((n for n in self.accuracy if n in self.bits), key=lambda n: self.bits[n])

    def _critical(self) -> Optional[dict]:
        from ..analysis.geometric import critical_attack_strength

        names = self.bits_models()
        if len(names) < 2 or len(self.eps) < 2:
            return None
        attack = "fgsm" if "fgsm" in self.attacks else self.attacks[0]
        table = np.array([self.accuracy[n][attack] for n in names])
        try:
            found = critical_attack_strength(table, self.eps)
        except ValueError:
            return None
        return {"attack": attack, "eps": found.eps, "variance": found.variance.tolist()}

    # ------------------------------------------------------------------ outputs
    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "keras_qrobust": __version__, "eps": self.eps,
                "attacks": self.attacks, "accuracy": self.accuracy, "provenance": self.provenance,
                "warnings": list(WARNINGS), "suspect": self.suspect, "bits": self.bits, "critical": self.critical,
                "lipschitz": self.lipschitz, "lipschitz_bits": self.lipschitz_bits, "transfer": self.transfer,
                **({"sections": self.sections} if self.sections else {}),
                **({"tradeoff": self.tradeoff} if self.tradeoff else {})}

    def to_json(self) -> str:
        data = self.to_dict()
        validate(data)
        return dumps_json(data) + "\n"

    def to_markdown(self) -> str:
        return lead_markdown(self) + "\n" + body_markdown(self)

    def figures(self) -> dict[str, bytes]:
        """PNG bytes of every plot the data allows, by title (:mod:`.figures`)."""
        return figures(self)

    def to_html(self, figures: Optional[dict] = None) -> str:
        """One self-contained page: tables, provenance, warnings and the plots as data URIs
        (``figures``: the output of :meth:`figures`, when already drawn)."""
        return to_html(self, figures)

    def save_plots(self, folder, overwrite: bool = False, figures: Optional[dict] = None) -> list[Path]:
        """Write every plot of :meth:`figures` as ``folder/<title>.png`` (atomically)."""
        import re

        folder = Path(folder)
        paths = []
        for title, data in (self.figures() if figures is None else figures).items():
            name = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") + ".png"
            with atomic_path(folder / name, overwrite=overwrite) as temporary:
                temporary.write_bytes(data)
            paths.append(folder / name)
        return paths

    def save(self, folder, overwrite: bool = False, figures: Optional[dict] = None) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.html`` into ``folder`` (atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        outputs = {"json": self.to_json(), "md": self.to_markdown(), "html": self.to_html(figures)}
        paths = {}
        for kind, text in outputs.items():
            paths[kind] = write_text(folder / f"report.{kind}", text, overwrite=overwrite)
        return paths
