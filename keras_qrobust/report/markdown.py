"""The report as Markdown: the lead (title and decision), then how the numbers were made and the tables."""

from __future__ import annotations

from .schema import WARNINGS

__all__ = ["lead_markdown", "body_markdown"]


def lead_markdown(report) -> str:
    """The title and the lead sections: what the report opens with, above the plots."""
    lines = ["# Robustness report", ""]
    for section in report.sections:
        if section.get("lead"):
            lines += [f"## {section['title']}", "", section["markdown"].rstrip("\n"), ""]
    return "\n".join(lines) + "\n"


def body_markdown(report) -> str:
    """Everything after the lead: how the numbers were made, the other sections, the tables."""
    p = report.provenance
    lines = [f"{p['samples']} inputs, seed {p['seed']}, L{p.get('norm', 'inf')} budgets "
             f"ε ∈ {{{', '.join(f'{e:g}' for e in report.eps)}}}. Attacks: "
             + "; ".join(f"{k}: {v}" for k, v in p["attacks"].items()) + ".", ""]
    for section in report.sections:
        if not section.get("lead"):
            lines += [f"## {section['title']}", "", section["markdown"].rstrip("\n"), ""]
    for attack in report.attacks:
        lines += [f"## {attack} — accuracy %", "", "| model | " + " | ".join(f"ε = {e:g}" for e in report.eps) + " |",
                  "|---|" + "---|" * len(report.eps)]
        for name, rows in report.accuracy.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in rows[attack]) + " |")
        lines.append("")
    if report.critical and report.critical["eps"] > 0:
        over = ", ".join(str(report.bits[n]) for n in report.bits_models())
        lines += [f"Critical attack strength ({report.critical['attack']}, over weight bits {over}): "
                  f"ε* = {report.critical['eps']:g}", ""]
    elif report.critical:
        lines += [f"Critical attack strength ({report.critical['attack']}): not reported — the accuracy over the "
                  "weight bit widths varies least without any attack (ε* = 0), which says nothing about an "
                  "attack strength.", ""]
    lines += ["## Suspect curves", ""] + ([f"- {s}" for s in report.suspect] or ["none"]) + [""]
    lines += ["## How to read these numbers", ""] + [f"- {w}" for w in WARNINGS]
    return "\n".join(lines) + "\n"
