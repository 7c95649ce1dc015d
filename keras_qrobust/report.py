"""RobustnessReport: JSON (versioned schema), Markdown and a self-contained HTML page.

The plots (matplotlib, embedded as PNG data URIs): accuracy vs ε per model (Zhou 2022
Fig. 6-10), accuracy vs weight bits per ε with the critical attack strength marked
(Gorsline 2021 Fig. 3), relative accuracy vs the geometric lower bound (Fig. 4/7),
σ_max(Q(W) − W) per layer (Song 2020 Fig. 3-4) and the UAP transfer matrix as a heat map —
each when the report has the data it needs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ._io import atomic_path, write_text
from .version import __version__

__all__ = ["RobustnessReport", "SCHEMA", "SCHEMA_VERSION", "validate", "WARNINGS"]

SCHEMA_VERSION = "1.0"

#: DESIGN.md §4, printed with every report
WARNINGS = (
    "Robust accuracy is accuracy on attacked test inputs, the attack run against the model scored "
    "(white-box) unless the row says transfer or black-box; clean accuracy is the ε = 0 column.",
    "A defense that changes gradients (μ-law mapping, rounding without straight-through gradients) must also "
    "be scored with gradient-free, transfer and BPDA attacks before its gradient-attack numbers are believed.",
    "Accuracy must fall as ε grows; a curve that does not is flagged below as suspect, not reported as a result.",
    "Sub-8-bit results hold for the artifact only when re-measured in its own runtime (kq.export.load).",
)

_NUMBER = {"type": "number"}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "keras_qrobust RobustnessReport",
    "type": "object",
    "required": ["schema_version", "keras_qrobust", "eps", "attacks", "accuracy", "provenance", "warnings",
                 "suspect"],
    "properties": {
        "schema_version": {"type": "string", "enum": [SCHEMA_VERSION]},
        "keras_qrobust": {"type": "string"},
        "eps": {"type": "array", "items": _NUMBER},
        "attacks": {"type": "array", "items": {"type": "string"}},
        "accuracy": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": {"type": "array", "items": _NUMBER}}},
        "provenance": {"type": "object", "required": ["attacks", "eps", "samples", "seed"]},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "suspect": {"type": "array", "items": {"type": "string"}},
        "bits": {"type": "object", "additionalProperties": {"type": "integer"}},
        "critical": {"type": ["object", "null"]},
        "lipschitz": {"type": "object"},
        "transfer": {"type": ["object", "null"]},
        "sections": {"type": "array", "items": {"type": "object", "required": ["title", "markdown"]}},
        "tradeoff": {"type": ["array", "null"], "items": {"type": "object", "required": ["name", "bytes", "robust"]}},
    },
}


def validate(data, schema: dict = SCHEMA, path: str = "$") -> None:
    """Check ``data`` against the subset of JSON Schema used by :data:`SCHEMA` (raise ValueError)."""
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not any(checks[t](data) for t in allowed):
            raise ValueError(f"{path}: expected {types}, got {type(data).__name__}")
    if "enum" in schema and data not in schema["enum"]:
        raise ValueError(f"{path}: {data!r} is not one of {schema['enum']}")
    if isinstance(data, dict):
        for key in schema.get("required", []):
            if key not in data:
                raise ValueError(f"{path}: missing required key {key!r}")
        properties = schema.get("properties", {})
        for key, value in data.items():
            sub = properties.get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                validate(value, sub, f"{path}.{key}")
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(data):
            validate(value, schema["items"], f"{path}[{i}]")


def _suspect(accuracy: dict, eps: list) -> list[str]:
    """Curves whose accuracy rises with ε by more than one point."""
    out = []
    for name, rows in accuracy.items():
        for attack, values in rows.items():
            if any(b > a + 0.01 for a, b in zip(values, values[1:])):
                out.append(f"{name} / {attack}: accuracy rises with ε ({', '.join(f'{100 * v:.1f}' for v in values)})")
    return out


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
        report.suspect = _suspect(report.accuracy, report.eps)
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
    def _bits_models(self) -> list[str]:
        return sorted((n for n in self.accuracy if n in self.bits), key=lambda n: self.bits[n])

    def _critical(self) -> Optional[dict]:
        from .analysis.geometric import critical_attack_strength

        names = self._bits_models()
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
        return json.dumps(data, indent=2) + "\n"

    def _lead_markdown(self) -> str:
        """The title and the lead sections: what the report opens with, above the plots."""
        lines = ["# Robustness report", ""]
        for section in self.sections:
            if section.get("lead"):
                lines += [f"## {section['title']}", "", section["markdown"].rstrip("\n"), ""]
        return "\n".join(lines) + "\n"

    def _body_markdown(self) -> str:
        """Everything after the lead: how the numbers were made, the other sections, the tables."""
        p = self.provenance
        lines = [f"{p['samples']} inputs, seed {p['seed']}, L{p.get('norm', 'inf')} budgets "
                 f"ε ∈ {{{', '.join(f'{e:g}' for e in self.eps)}}}. Attacks: "
                 + "; ".join(f"{k}: {v}" for k, v in p["attacks"].items()) + ".", ""]
        for section in self.sections:
            if not section.get("lead"):
                lines += [f"## {section['title']}", "", section["markdown"].rstrip("\n"), ""]
        for attack in self.attacks:
            lines += [f"## {attack} — accuracy %", "", "| model | " + " | ".join(f"ε = {e:g}" for e in self.eps) + " |",
                      "|---|" + "---|" * len(self.eps)]
            for name, rows in self.accuracy.items():
                lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in rows[attack]) + " |")
            lines.append("")
        if self.critical and self.critical["eps"] > 0:
            over = ", ".join(str(self.bits[n]) for n in self._bits_models())
            lines += [f"Critical attack strength ({self.critical['attack']}, over weight bits {over}): "
                      f"ε* = {self.critical['eps']:g}", ""]
        elif self.critical:
            lines += [f"Critical attack strength ({self.critical['attack']}): not reported — the accuracy over the "
                      "weight bit widths varies least without any attack (ε* = 0), which says nothing about an "
                      "attack strength.", ""]
        lines += ["## Suspect curves", ""] + ([f"- {s}" for s in self.suspect] or ["none"]) + [""]
        lines += ["## How to read these numbers", ""] + [f"- {w}" for w in WARNINGS]
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        return self._lead_markdown() + "\n" + self._body_markdown()

    def figures(self) -> dict[str, bytes]:
        """PNG bytes of every plot the data allows, by title."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figures = {}

        def png(fig) -> bytes:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
            return buffer.getvalue()

        if self.tradeoff:
            figures["Size vs robust accuracy"] = self._tradeoff_figure(plt, png)

        fig, axes = plt.subplots(1, len(self.attacks), figsize=(4.2 * len(self.attacks), 3.4), squeeze=False)
        for ax, attack in zip(axes[0], self.attacks):
            for name, rows in self.accuracy.items():
                ax.plot(self.eps, [100 * v for v in rows[attack]], marker="o", label=name)
            ax.set(title=attack, xlabel="ε", ylabel="accuracy %", ylim=(0, 100))
        axes[0][0].legend(fontsize=7)
        figures["Accuracy vs ε (Zhou 2022, Fig. 6-10)"] = png(fig)

        names = self._bits_models()
        if len(names) >= 2:
            attack = self.critical["attack"] if self.critical else self.attacks[0]
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            criticals = [i for i, e in enumerate(self.eps) if self.critical is not None
                         and math.isclose(e, self.critical["eps"])]
            labelled = _legend_indices(len(self.eps), criticals)
            for i, e in enumerate(self.eps):
                critical = i in criticals
                label = f"ε = {e:g}" + (" (critical)" if critical else "") if i in labelled else None
                ax.plot([self.bits[n] for n in names], [100 * self.accuracy[n][attack][i] for n in names],
                        marker="o", linewidth=3 if critical else 1, label=label)
            ax.set(title=f"{attack}: accuracy vs weight bits", xlabel="weight bits", ylabel="accuracy %")
            ax.legend(fontsize=7)
            figures["Accuracy vs weight bits (Gorsline 2021, Fig. 3)"] = png(fig)
            figures["Relative accuracy vs the lower bound (Gorsline 2021, Fig. 4/7)"] = self._bound_figure(
                plt, png, names, attack)
        if self.lipschitz:
            fig, ax = plt.subplots(figsize=(5.5, 3.4))
            for name, rows in self.lipschitz.items():
                ax.plot(range(len(rows)), [r["sigma_max"] for r in rows], marker="s", label=name)
                ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=45, fontsize=7)
            ax.axhline(1.0, color="grey", linestyle="--")
            ax.set(title=f"σ_max(Q_{self.lipschitz_bits}(W) − W) per layer", ylabel="σ_max")
            ax.legend(fontsize=7)
            figures["Lipschitz constant of the quantization error (Song 2020, Fig. 3-4)"] = png(fig)
        if self.transfer:
            matrix = 100 * np.asarray(self.transfer["accuracy"])
            labels = self.transfer["labels"]
            fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
            image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100)
            ax.set_xticks(range(len(labels)), labels, rotation=45)
            ax.set_yticks(range(len(labels)), labels)
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="white", fontsize=8)
            ax.set(xlabel="evaluated on", ylabel="UAP crafted on", title="accuracy % under transferred UAPs")
            fig.colorbar(image)
            figures["UAP transfer matrix"] = png(fig)
        return figures

    def _tradeoff_figure(self, plt, png) -> bytes:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for point in self.tradeoff:
            robust = 100 * point["robust"]
            low, high = 100 * point.get("low", point["robust"]), 100 * point.get("high", point["robust"])
            chosen = point.get("chosen", False)
            ax.errorbar(point["bytes"], robust, yerr=[[robust - low], [high - robust]], fmt="*" if chosen else "o",
                        markersize=14 if chosen else 6, capsize=3, color="crimson" if chosen else "steelblue")
            ax.annotate(point["name"] + (" (chosen)" if chosen else ""), (point["bytes"], robust),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set(title="weights size vs robust accuracy (95% CI)", xlabel="weights, bytes at their bit width",
               ylabel="robust accuracy %")
        return png(fig)

    def _bound_figure(self, plt, png, names, attack) -> bytes:
        from .analysis.geometric import fit_geometric_bound, geometric_lower_bound

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        eps = np.asarray(self.eps)
        for name in names:
            values = np.asarray(self.accuracy[name][attack])
            relative = values / values[0] if values[0] > 0 else values
            line, = ax.plot(eps, relative, marker="o", label=f"{name} measured")
            fit = fit_geometric_bound(eps, relative, self.bits[name])
            fine = np.linspace(0, eps.max(), 200)
            ax.plot(fine, geometric_lower_bound(fine, fit.n, self.bits[name]), color=line.get_color(), linestyle="--",
                    label=f"bound, fitted n = {fit.n:.3g}")
        ax.set(title="relative accuracy and the geometric bound (eq. 14)", xlabel="ε", ylabel="A_r", ylim=(0, 1.05))
        ax.legend(fontsize=6)
        return png(fig)

    def to_html(self, figures: Optional[dict] = None) -> str:
        """One self-contained page: tables, provenance, warnings and the plots as data URIs
        (``figures``: the output of :meth:`figures`, when already drawn)."""
        sections = []
        for title, data in (self.figures() if figures is None else figures).items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            sections.append(f'<figure><img alt="{html.escape(title)}" src="{uri}"><figcaption>{html.escape(title)}'
                            "</figcaption></figure>")
        lead = _markdown_tables_to_html(self._lead_markdown())
        body = _markdown_tables_to_html(self._body_markdown())
        wrapped = f"<div id='decision'>{lead}</div>" if any(s.get("lead") for s in self.sections) else lead
        return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>keras_qrobust robustness report</title>"
                "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:3px 8px}figure{display:inline-block;margin:8px}"
                "#decision{background:#f4f8fb;border:1px solid #9bc;padding:4px 14px}</style>"
                f"</head><body>{wrapped}<h2>Plots</h2>{''.join(sections)}{body}</body></html>\n")

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


def _legend_indices(count: int, keep=(), most: int = 12) -> set[int]:
    """The curves named in a legend: all of ``count`` when they fit in ``most``, else about
    ``most`` evenly spaced ones (first and last included) and always those in ``keep``."""
    if count <= most:
        return set(range(count))
    return {int(round(i)) for i in np.linspace(0, count - 1, most)} | set(keep)


def _inline(text: str) -> str:
    """Escaped text with Markdown's ``**bold**`` and ```code``` spans as HTML."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _markdown_tables_to_html(markdown: str) -> str:
    """The report's own Markdown (headings, tables, bullets, paragraphs; bold and code spans) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[_inline(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<p>• {_inline(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)
