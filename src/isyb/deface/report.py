"""A self-contained HTML summary of a defacing run (QC pictures embedded)."""

from __future__ import annotations

import html
from pathlib import Path

from isyb import __version__
from isyb.io import write_text
from isyb.viz.html import img, page

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.failed{background:#fde2e2}.warn{background:#fff4d6}
img{max-width:720px;display:block;margin:0.5em 0 2em 0}
"""


def _embed(png: str | None, root: Path) -> str:
    """The QC picture as an inline image; a relative ``png`` is under ``root``."""
    return img(root / png, "QC of the defaced image", quote='"') if png else ""


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def _reference_cells(reference: dict | None) -> tuple[str, str, str]:
    """Own-face changed, left for the guard, left unreached by third (issue 20)."""
    if not reference:
        return "n/a", "n/a", "n/a"
    thirds = reference["thirds"]
    unreached = " / ".join(_percent(thirds[name]["unreached_fraction"])
                           for name in ("upper", "middle", "lower"))
    return (_percent(reference["changed_fraction"]), _percent(reference["guard_fraction"]),
            unreached)


def _row(subject: str, image: dict, root: Path) -> tuple[str, str]:
    name = html.escape(image["file"])
    if image["status"] != "ok":
        cells = (f"<td>{html.escape(subject)}</td><td>{name}</td>"
                 f"<td colspan='12'>failed: {html.escape(image['error'])}</td>")
        return f"<tr class='failed'>{cells}</tr>", ""
    p = image["provenance"]
    note = "little or no face found" if p.get("little_or_no_face") else ""
    fraction = p.get("face_surface_changed_fraction")
    cells = "".join(f"<td>{html.escape(str(value))}</td>" for value in (
        subject, image["file"], p["template"]["name"], p["method"],
        p["registration"]["score_brain_dice"], p["changed_voxels"],
        p["brain_guard"]["changed_voxels_in_guard"],
        _percent(fraction), _percent(p.get("face_skin_in_guard_fraction")),
        *_reference_cells(p.get("face_reference")), note))
    css = " class='warn'" if note else ""
    return f"<tr{css}>{cells}</tr>", f"<h3>{name}</h3>{_embed(p.get('qc_png'), root)}"


def write_summary(path: Path, records: list[dict], root: Path) -> None:
    """Write ``index.html`` summarising per-subject records.

    ``records`` are :class:`isyb.deface.dataset.SubjectRecord` dicts (from
    :func:`isyb.deface.dataset.run_subject`, or read back from ``logs/``);
    relative QC picture paths in them are under ``root``.
    """
    rows, figures = [], []
    counts = {"ok": 0, "failed": 0}
    for record in records:
        for image in record["images"]:
            counts[image["status"]] = counts.get(image["status"], 0) + 1
            row, figure = _row(record["subject"], image, root)
            rows.append(row)
            figures.append(figure)
    header = "".join(f"<th>{h}</th>" for h in (
        "subject", "image", "template", "method", "registration (brain Dice)",
        "changed voxels", "changed in brain guard", "face-region surface changed",
        "face-region skin kept by the brain guard (forehead, brows, upper orbits)",
        "own face surface changed", "own face left for the brain guard",
        "own face left unreached (upper / middle / lower third)", "note"))
    body = (f"<h1>isyb defacing summary</h1><p>isyb {__version__}; {len(records)} subjects; "
            f"{counts['ok']} images defaced, {counts['failed']} failed (failed images were "
            f"not copied to the release). Masks, provenance and QC pictures are in this "
            f"folder. The <em>own face</em> columns measure the subject's own face surface "
            f"(brows to the lower edge of the mandible, found without a template), so they "
            f"show what the template's face region missed.</p>"
            f"<table><tr>{header}</tr>{''.join(rows)}</table>{''.join(figures)}")
    write_text(path, page("isyb defacing summary", body, style=STYLE))
