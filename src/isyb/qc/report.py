"""QC reports: per-run pages and the group report, as self-contained HTML files.

Per-run pages embed matplotlib PNGs (base64): the tissue segmentation and air
mask over three slices for anatomical runs; the motion parameters, FD, DVARS
and a carpet plot for BOLD runs.

The group report draws, per metric, a bar plot (one bar per run, sorted by
name) and a strip plot (one point per run, with the group mean and the
SD-rule bounds), as the data descriptor's Figs. 1-2. Plots are inline SVG
written here (no plotting library, no network): every bar and point carries
its run in a ``<title>`` (the browser's hover tooltip) and in
``data-run``, and a few lines of script highlight that run in every plot
while the pointer is on it. Excluded runs are drawn in red and listed in a
table with their reasons; failed runs are listed with their errors.
"""

from __future__ import annotations

import html
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from isyb import __version__
from isyb.io import write_text
from isyb.qc.rules import ExclusionRules
from isyb.viz.html import figure_png, img, page

#: Metrics plotted in the group report, per modality, in this order.
REPORT_METRICS: dict[str, tuple[str, ...]] = {
    "T1w": ("isyb_snr", "isyb_snrd_gm", "isyb_cnr", "isyb_fber", "snrd_gm", "cnr", "fber",
            "efc", "fwhm_avg", "fwhm_avg_mm", "cjv", "wm2max", "icvs_csf", "icvs_gm",
            "icvs_wm"),
    "bold": ("fd_mean", "fd_num", "fd_perc", "dvars_std", "dvars_nstd", "dvars_vstd", "gcor",
             "tsnr", "snr", "fber", "efc", "fwhm_avg", "fwhm_x", "fwhm_y", "fwhm_z"),
}
REPORT_METRICS["T2w"] = REPORT_METRICS["T1w"]

UNITS = {"fd_mean": "mm", "fwhm_avg": "voxels", "fwhm_x": "voxels", "fwhm_y": "voxels",
         "fwhm_z": "voxels", "fwhm_avg_mm": "mm", "fd_perc": "%"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 2em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.failed{background:#fde2e2}
.metric{display:inline-block;margin:0 1.5em 1.5em 0;vertical-align:top}
.metric h3{margin:0 0 0.2em 0;font-size:1em}
svg.metric-plot{background:#fff;border:1px solid #ddd}
svg .run{fill:#4c78a8}svg .excluded{fill:#d62728}svg .hl{fill:#f2a900;stroke:#000}
#hover{position:sticky;top:0;background:#fffbe6;padding:4px 8px;min-height:1.3em;
border:1px solid #eee}
img{max-width:100%;display:block;margin:0.5em 0 1.5em 0}
"""

SCRIPT = """
(function(){
  var status=document.getElementById('hover');
  function mark(run,on){
    document.querySelectorAll('[data-run]').forEach(function(el){
      if(el.getAttribute('data-run')===run){el.classList.toggle('hl',on);}
    });
  }
  document.querySelectorAll('[data-run]').forEach(function(el){
    el.addEventListener('mouseenter',function(){
      mark(el.getAttribute('data-run'),true);
      status.textContent=el.getAttribute('data-label');
    });
    el.addEventListener('mouseleave',function(){mark(el.getAttribute('data-run'),false);});
  });
  document.body.setAttribute('data-plots',
    String(document.querySelectorAll('svg.metric-plot').length));
})();
"""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def anat_figures(data: np.ndarray, zooms: np.ndarray, masks) -> dict[str, bytes]:
    """Segmentation overlay (CSF, GM, WM, air outline) on three slices; PNG bytes.

    ``data`` and the masks are RAS arrays with voxel size ``zooms`` (mm); the
    slices go through the brain's centroid, drawn with their true aspect.
    """
    from matplotlib.colors import ListedColormap

    brain = np.argwhere(masks.brain)
    centre = brain.mean(axis=0).astype(int) if brain.size else np.array(data.shape) // 2
    i, j, k = (int(c) for c in centre)
    vmax = float(np.percentile(data[masks.head], 99.5)) if masks.head.any() else 1.0
    colours = ListedColormap([(0, 0, 0, 0), (0.2, 0.6, 1.0, 0.45), (1.0, 0.3, 0.3, 0.45),
                              (1.0, 1.0, 0.2, 0.45)])
    fig = _figure(12, 4.2)
    axes = fig.subplots(1, 3)
    zx, zy, zz = (float(z) for z in zooms)
    views = [("axial", np.s_[:, :, k], zy / zx), ("coronal", np.s_[:, j, :], zz / zx),
             ("sagittal", np.s_[i, :, :], zz / zy)]
    for ax, (name, index, aspect) in zip(axes, views, strict=True):
        ax.imshow(np.rot90(data[index]), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest",
                  aspect=aspect)
        ax.imshow(np.rot90(masks.labels[index]), cmap=colours, vmin=0, vmax=3,
                  interpolation="nearest", aspect=aspect)
        if masks.air[index].any():
            ax.contour(np.rot90(masks.air[index]).astype(float), levels=[0.5],
                       colors="#00e676", linewidths=0.8)
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle("tissues: CSF blue, GM red, WM yellow; air mask outlined in green")
    fig.tight_layout()
    return {"segmentation": figure_png(fig)}


def bold_figures(qc, fd_threshold: float) -> dict[str, bytes]:
    """Motion, FD, DVARS traces and a carpet plot of one BOLD run; PNG bytes."""
    table = pd.DataFrame(qc.table)
    fig = _figure(12, 7.5)
    axes = fig.subplots(4, 1, sharex=True)
    frames = np.arange(len(table))
    for name in ("trans_x", "trans_y", "trans_z"):
        axes[0].plot(frames, table[name], label=name, lw=1)
    axes[0].set_ylabel("translation (mm)")
    for name in ("rot_x", "rot_y", "rot_z"):
        axes[1].plot(frames, np.degrees(table[name]), label=name, lw=1)
    axes[1].set_ylabel("rotation (deg)")
    axes[2].plot(frames, table["framewise_displacement"], color="k", lw=1)
    axes[2].axhline(fd_threshold, color="#d62728", ls="--", lw=1,
                    label=f"{fd_threshold:g} mm threshold")
    axes[2].set_ylabel("FD (mm)")
    axes[3].plot(frames, table["dvars_std"], color="#4c78a8", lw=1)
    axes[3].set_ylabel("DVARS (std)")
    axes[3].set_xlabel("volume")
    for ax in axes[:3]:
        ax.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    traces = figure_png(fig)

    voxels = qc.realigned[qc.mask]  # (V, t)
    if voxels.shape[0] > 20000:  # every n-th voxel keeps the picture and the page light
        voxels = voxels[:: voxels.shape[0] // 20000 + 1]
    centred = voxels - voxels.mean(axis=1, keepdims=True)
    scale = centred.std(axis=1, keepdims=True)
    carpet = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    fig = _figure(12, 4)
    ax = fig.subplots()
    ax.imshow(carpet, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest",
              extent=(qc.dummy_scans - 0.5, qc.dummy_scans + carpet.shape[1] - 0.5,
                      carpet.shape[0], 0))
    ax.set_xlabel("volume")
    ax.set_ylabel("brain voxels")
    ax.set_title("carpet plot: realigned brain voxels, z-scored over time (±2)")
    fig.tight_layout()
    return {"motion, FD and DVARS": traces, "carpet": figure_png(fig)}


def _metric_rows(metrics: dict) -> str:
    return "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                   for k, v in metrics.items())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return html.escape(str(value))


def write_run_page(path: Path, record: dict, figures: dict[str, bytes]) -> None:
    """The per-run HTML page: metrics table and embedded figures (PNG bytes)."""
    extra = "".join(f"<p>{html.escape(k)}: {html.escape(str(record[k]))}</p>"
                    for k in ("noise_source", "note", "tr_s") if k in record)
    images = "".join(f"<h2>{html.escape(name)}</h2>{img(png, name)}"
                     for name, png in figures.items())
    body = (f"<h1>{html.escape(record['bids_name'])}</h1><p>isyb {__version__} quality "
            f"control of {html.escape(record['source'])}</p>{extra}<table><tr><th>metric</th>"
            f"<th>value</th></tr>{_metric_rows(record['metrics'])}</table>{images}")
    write_text(path, page(f"isyb QC: {record['bids_name']}", body, style=STYLE))


def _jitter(name: str) -> float:
    return (zlib.crc32(name.encode()) % 1000) / 1000.0 - 0.5


def metric_svg(table: pd.DataFrame, metric: str, excluded: set[str],
               bounds: tuple[float, float, float] | None) -> str:
    """Bar plot and strip plot of one metric as one inline SVG.

    ``bounds`` is (mean, low, high) of the SD rule, drawn as lines on the
    strip plot, or None when the rule does not apply to the metric.
    """
    values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
    names = table["bids_name"].tolist()
    subjects = table["participant_id"].tolist()
    finite = values[np.isfinite(values)]
    extra = [b for b in (bounds or ()) if np.isfinite(b)]
    low = min([0.0, *finite, *extra]) if finite.size else 0.0
    high = max([*finite, *extra]) if finite.size else 1.0
    if high <= low:
        high = low + 1.0
    width, height, left, strip_w, pad = 560, 190, 60, 130, 12
    bar_w = min((width - left - strip_w - 3 * pad) / max(len(values), 1), 40.0)
    strip_x = width - strip_w - pad

    def y(v: float) -> float:
        return pad + (height - 2 * pad) * (1 - (v - low) / (high - low))

    parts = [f"<svg class='metric-plot' data-metric='{html.escape(metric)}' "
             f"xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img'>"]
    for tick in np.linspace(low, high, 4):
        parts.append(f"<text x='{left - 4}' y='{y(tick) + 4:.1f}' font-size='10' "
                     f"text-anchor='end'>{tick:.3g}</text>")
    parts.append(f"<line x1='{left}' x2='{strip_x - pad}' y1='{y(0) if low <= 0 else y(low):.1f}' "
                 f"y2='{y(0) if low <= 0 else y(low):.1f}' stroke='#888'/>")
    for index, (value, name, subject) in enumerate(zip(values, names, subjects, strict=True)):
        if not np.isfinite(value):
            continue
        css = "excluded" if name in excluded else "run"
        label = html.escape(f"{subject} · {name}: {metric} = {value:.4g}"
                            + (" (excluded)" if name in excluded else ""))
        top, base = sorted((y(value), y(max(low, 0.0))))
        x = left + pad + index * bar_w
        parts.append(f"<rect class='{css}' data-run='{html.escape(name)}' data-label='{label}' "
                     f"x='{x:.2f}' y='{top:.1f}' width='{max(bar_w * 0.85, 0.6):.2f}' "
                     f"height='{max(base - top, 0.5):.1f}'><title>{label}</title></rect>")
        cx = strip_x + strip_w / 2 + _jitter(name) * strip_w * 0.6
        parts.append(f"<circle class='{css}' data-run='{html.escape(name)}' "
                     f"data-label='{label}' cx='{cx:.1f}' cy='{y(value):.1f}' r='3.5'>"
                     f"<title>{label}</title></circle>")
    if bounds is not None:
        for value, dash in zip(bounds, ("", "4 3", "4 3"), strict=True):
            if np.isfinite(value):
                parts.append(f"<line x1='{strip_x}' x2='{strip_x + strip_w}' y1='{y(value):.1f}' "
                             f"y2='{y(value):.1f}' stroke='#555' stroke-dasharray='{dash}'/>")
    parts.append("</svg>")
    return "".join(parts)


def _bounds(table: pd.DataFrame, metric: str, modality: str,
            rules: ExclusionRules) -> tuple[float, float, float] | None:
    from isyb.qc.rules import MIN_RUNS_FOR_SD, noise_groups

    if len(noise_groups(table)) > 1:  # one mean and SD per noise source: no single band
        return None
    if metric == "fd_mean" and rules.fd_threshold is not None and modality == "bold":
        values = pd.to_numeric(table[metric], errors="coerce").dropna()
        return (float(values.mean()), float("nan"), float(rules.fd_threshold))
    if rules.sd_threshold is None or metric not in rules.metrics_for(modality, [metric]):
        return None
    values = pd.to_numeric(table[metric], errors="coerce").dropna()
    if len(values) < MIN_RUNS_FOR_SD:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    return (mean, mean - rules.sd_threshold * sd, mean + rules.sd_threshold * sd)


def _group_notes(table: pd.DataFrame, rules: ExclusionRules) -> str:
    """Paragraphs on the noise-source groups and on the group size the SD rule needs."""
    from isyb.qc.rules import min_runs_to_exclude, noise_groups, unreliable_motion

    unmeasured = unreliable_motion(table)
    motion = (f"<p><b>Motion not measurable</b> (field of view too small for the FD radius; "
              f"the FD rule does not exclude them): {html.escape(', '.join(unmeasured))}.</p>"
              if unmeasured else "")
    if rules.sd_threshold is None:
        return motion
    k = float(rules.sd_threshold)
    need = min_runs_to_exclude(k)
    groups = noise_groups(table)
    notes = []
    if len(groups) > 1:
        sizes = html.escape(", ".join(f"{source or 'unknown'}: {len(rows)}"
                                      for source, rows in groups.items()))
        notes.append(f"The SD rule compares runs only with runs of the same noise_source "
                     f"({sizes}): their noise was measured differently, so they are never "
                     f"pooled; the strip plots draw no bounds.")
    notes.append(f"With n runs no run can lie beyond (n - 1)/sqrt(n) SDs, so the ±{k:g} SD "
                 f"rule can exclude a run only in a group of at least {need} runs.")
    small = [f"{source or 'all'} ({len(rows)} runs)" for source, rows in groups.items()
             if len(rows) < need]
    if small:
        notes.append(f"<b>Warning</b>: smaller than that, so the SD rule cannot fire: "
                     f"{html.escape(', '.join(small))}.")
    return motion + "".join(f"<p>{n}</p>" for n in notes)


def write_group_report(path: Path, tables: dict[str, pd.DataFrame], reasons: pd.DataFrame,
                       failures: list[dict], rules: ExclusionRules) -> None:
    """The group report: per modality, one bar + strip plot per metric; exclusions; failures."""
    sections = []
    for modality, table in tables.items():
        excluded = set(reasons.loc[reasons["modality"] == modality, "bids_name"])
        plots = []
        for metric in REPORT_METRICS.get(modality, ()):
            if metric not in table:
                continue
            unit = f" ({UNITS[metric]})" if metric in UNITS else ""
            svg = metric_svg(table, metric, excluded, _bounds(table, metric, modality, rules))
            plots.append(f"<div class='metric'><h3>{metric}{unit}</h3>{svg}</div>")
        sections.append(f"<h2>{html.escape(modality)}: {len(table)} runs, {len(excluded)} "
                        f"excluded</h2>{_group_notes(table, rules)}{''.join(plots)}")
    reason_rows = "".join(
        f"<tr><td>{html.escape(r.participant_id)}</td><td>{html.escape(r.bids_name)}</td>"
        f"<td>{html.escape(r.rule)}</td><td>{html.escape(r.metric)}</td><td>{r.value:.5g}</td>"
        f"<td>{html.escape(r.threshold)}</td></tr>" for r in reasons.itertuples())
    failure_rows = "".join(
        f"<tr class='failed'><td>{html.escape(f['participant_id'])}</td>"
        f"<td>{html.escape(f['source'])}</td><td>{html.escape(f.get('error', ''))}</td></tr>"
        for f in failures)
    sd = "off" if rules.sd_threshold is None else f"±{rules.sd_threshold:g} SD of the group " \
        "mean (mean and SD computed once over all runs of the modality with the same noise " \
        "source, sample SD)"
    fd = "off" if rules.fd_threshold is None else f"mean FD > {rules.fd_threshold:g} mm"
    body = (
        f"<h1>isyb group quality control</h1><p>isyb {__version__}. Exclusion rules: SD rule "
        f"{html.escape(sd)}; FD rule {html.escape(fd)}. Red marks excluded runs; hover a bar or "
        f"point to see its run in every plot. Strip plots: solid line = group mean, dashed = "
        f"rule bounds.</p><div id='hover'></div>{''.join(sections)}"
        f"<h2>Excluded runs</h2><table><tr><th>participant</th><th>run</th><th>rule</th>"
        f"<th>metric</th><th>value</th><th>threshold</th></tr>{reason_rows}</table>"
        f"<h2>Failed runs ({len(failures)})</h2><table><tr><th>participant</th><th>file</th>"
        f"<th>error</th></tr>{failure_rows}</table>")
    write_text(path, page("isyb group QC", body, style=STYLE, script=SCRIPT))
