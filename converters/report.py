"""``report.json`` and a self-contained ``report.html`` (inline SVG plots, no scripts, no external files)."""
import html
import json
from typing import Any, Dict, List, Optional, Sequence

from ..files import atomic_write
from .report_confidence import section_html

PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def write_json(report: Dict[str, Any], path: str) -> str:
    return atomic_write(path, json.dumps(report, indent=2) + "\n")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def confusion_svg(cm: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> str:
    n = len(labels)
    cell = max(14, min(36, 360 // max(1, n)))
    left, top = 90, 40
    w, h = left + n * cell + 10, top + n * cell + 60
    peak = max(1, max(max(r) for r in cm))
    parts = ['<svg class="plot confusion" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" '
             'aria-label="%s">' % (w, h, _esc(title)),
             '<text x="%d" y="18" font-weight="bold">%s</text>' % (left, _esc(title))]
    for i, row in enumerate(cm):
        parts.append('<text x="%d" y="%d" text-anchor="end" font-size="11">%s</text>'
                     % (left - 4, top + i * cell + cell * 0.65, _esc(labels[i])))
        for j, v in enumerate(row):
            shade = int(255 - 200 * (v / peak))
            color = "rgb(%d,%d,255)" % (shade, shade) if i == j else "rgb(255,%d,%d)" % (shade, shade)
            parts.append('<rect class="cell" x="%d" y="%d" width="%d" height="%d" fill="%s" stroke="#ddd">'
                         '<title>true %s, predicted %s: %d</title></rect>'
                         % (left + j * cell, top + i * cell, cell, cell, color if v else "#fff", _esc(labels[i]),
                            _esc(labels[j]), v))
            if v and cell >= 18:
                parts.append('<text x="%d" y="%d" text-anchor="middle" font-size="10">%d</text>'
                             % (left + j * cell + cell / 2, top + i * cell + cell * 0.65, v))
    for j in range(n):
        x = left + j * cell + cell / 2
        y = top + n * cell + 8
        parts.append('<text x="%d" y="%d" font-size="11" transform="rotate(60 %d %d)">%s</text>'
                     % (x, y, x, y, _esc(labels[j])))
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(series: Dict[str, List[Optional[float]]], labels: Sequence[str], title: str, cls: str) -> str:
    """Grouped bars in [0, 1] per label, one colour per series."""
    n, k = len(labels), max(1, len(series))
    group = max(18, min(60, 600 // max(1, n)))
    bw = max(3, (group - 6) // k)
    left, top, ph = 40, 30, 160
    w, h = left + n * group + 160, top + ph + 70
    parts = ['<svg class="plot %s" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" '
             'aria-label="%s">' % (cls, w, h, _esc(title)),
             '<text x="%d" y="18" font-weight="bold">%s</text>' % (left, _esc(title)),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (left, top + ph, left + n * group, top + ph)]
    for tick in (0.0, 0.5, 1.0):
        y = top + ph - tick * ph
        parts.append('<text x="%d" y="%d" text-anchor="end" font-size="10">%.1f</text>' % (left - 4, y + 3, tick))
    for s, (name, values) in enumerate(series.items()):
        for i, v in enumerate(values):
            if v is None:
                continue
            bh = max(0.0, min(1.0, v)) * ph
            parts.append('<rect class="bar" x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s %s: %.4f'
                         '</title></rect>' % (left + i * group + 3 + s * bw, top + ph - bh, bw, bh,
                                              PALETTE[s % len(PALETTE)], _esc(name), _esc(labels[i]), v))
        parts.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" font-size="11">%s'
                     '</text>' % (left + n * group + 15, top + 15 * s, PALETTE[s % len(PALETTE)],
                                  left + n * group + 30, top + 15 * s + 9, _esc(name)))
    for i, label in enumerate(labels):
        x, y = left + i * group + group / 2, top + ph + 12
        parts.append('<text x="%d" y="%d" font-size="11" transform="rotate(60 %d %d)">%s</text>'
                     % (x, y, x, y, _esc(label)))
    parts.append("</svg>")
    return "".join(parts)


def _rows(report: Dict[str, Any]) -> str:
    rows = []
    for a in [dict(report["fp32"], name="fp32 (source)")] + report["artifacts"]:
        m = a.get("metrics", {})
        g = a.get("gate") or {}
        cells = (a.get("name", a.get("file")), a.get("file", ""), _fmt_pct(m.get("top1")),
                 _fmt_pct(m.get("agreement")), _fmt(m.get("cosine_mean")), _fmt(m.get("cosine_centred_mean")),
                 len(a.get("float_nodes", [])) if "float_nodes" in a else "-",
                 _fmt(a.get("size_bytes", 0) / 1024.0, "%.1f KiB"), _fmt(a.get("latency_ms"), "%.3f ms"),
                 "-" if not g else ("passed" if g.get("passed") else "FAILED: " + "; ".join(g.get("reasons", []))))
        rows.append("<tr>%s</tr>" % "".join("<td>%s</td>" % _esc(c) for c in cells))
    return "".join(rows)


def _plots(report: Dict[str, Any]) -> str:
    labels, fp32, arts = report["labels"], report["fp32"], report["artifacts"]
    plots = []
    confusions = [(fp32["metrics"], "FP32 (source)")] + [(a["metrics"], a["name"]) for a in arts if "metrics" in a]
    if "confusion" in fp32["metrics"]:
        plots.append('<h2>Confusion matrices</h2><div class="row">%s</div>' % "".join(
            confusion_svg(m["confusion"], labels, name) for m, name in confusions if "confusion" in m))
        recall = {name: [c["recall"] for c in m["per_class"]] for m, name in confusions if "per_class" in m}
        plots.append("<h2>Per-class recall</h2>" + bars_svg(recall, labels, "Recall per class", "recall"))
    bins = len(fp32["metrics"]["confidence_histogram"])
    edges = ["%.1f-%.1f" % (i / bins, (i + 1) / bins) for i in range(bins)]
    hist = {}
    for m, name in confusions:
        total = max(1, sum(m["confidence_histogram"]))
        hist[name] = [c / total for c in m["confidence_histogram"]]
    plots.append("<h2>Top-1 confidence</h2>" + bars_svg(hist, edges, "Share of images per top-1 confidence bin",
                                                         "histogram"))
    return "\n".join(plots)


def _steps(report: Dict[str, Any]) -> str:
    items = []
    for a in report["artifacts"]:
        steps = "; ".join("%s: %s" % kv for kv in (a.get("steps") or {}).items())
        kept = a.get("float_nodes") or []
        items.append("<li>%s: %s%s</li>" % (_esc(a["name"]), _esc(steps or "-"), _esc(
            "; kept in float: %s" % ", ".join(kept[:20]) + (" ..." if len(kept) > 20 else "") if kept else "")))
    return "<h2>Steps</h2><ul id=\"steps\">%s</ul>" % "".join(items) if items else ""


def write_html(report: Dict[str, Any], path: str) -> str:
    fp32 = report["fp32"]
    failures = "".join("<li>%s (at %s): %s</li>" % (_esc(f["target"]), _esc(f.get("step", "convert")),
                                                    _esc(f["error"])) for f in report.get("failed", []))
    doc = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgesight report: %(name)s</title>
<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.row{display:flex;flex-wrap:wrap;gap:1em}
.fail{color:#b00}</style></head><body>
<h1>%(name)s %(version)s: INT8 validation</h1>
<p>Validation set: %(images)d images (%(kind)s), %(val)s. Calibration: %(calib)d images, method %(method)s.
Gate: accuracy drop &le; %(drop)s pt, agreement &ge; %(agree)s, logit cosine &ge; %(cosine)s.</p>
<table id="summary"><tr><th>artifact</th><th>file</th><th>top-1</th><th>agreement</th><th>cosine</th>
<th>centred cosine</th><th>layers in float</th><th>size</th><th>median latency</th><th>gate</th></tr>%(rows)s</table>
%(failures)s
%(plots)s
%(confidence)s
%(steps)s
<p><small>edgesight %(edgesight)s (%(versions)s); report.json has every number shown here.</small></p>
</body></html>
""" % {"name": _esc(report["package"]["name"]), "version": _esc(report["package"]["version"]),
       "images": fp32["metrics"]["images"], "kind": "labelled" if "top1" in fp32["metrics"] else "unlabelled",
       "val": _esc(report["validation_set"]), "calib": report["calibration"]["images"],
       "method": _esc(report["calibration"]["method"]), "drop": _esc(report["gate"]["max_accuracy_drop"]),
       "agree": _esc(report["gate"]["min_agreement"]), "cosine": _esc(report["gate"].get("min_cosine", "-")),
       "rows": _rows(report),
       "failures": ('<h2 class="fail">Targets that failed</h2><ul class="fail">%s</ul>' % failures) if failures
       else "", "plots": _plots(report), "steps": _steps(report),
       "confidence": section_html(report.get("confidence"), report["labels"]), "edgesight": _esc(report["edgesight"]),
       "versions": _esc(", ".join("%s %s" % kv for kv in sorted((report.get("versions") or {}).items())))}
    return atomic_write(path, doc)


def write_confidence_html(report: Dict[str, Any], path: str) -> str:
    """``calibration.html`` of ``edgesight calibrate``: the confidence section alone."""
    doc = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgesight calibration: %s</title>'
           '<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{border:1px '
           'solid #ccc;padding:4px 8px;text-align:right}.row{display:flex;flex-wrap:wrap;gap:1em}</style></head>'
           '<body><h1>%s %s: confidence</h1>%s</body></html>\n'
           % (_esc(report["package"]["name"]), _esc(report["package"]["name"]), _esc(report["package"]["version"]),
              section_html(report.get("confidence"), report["labels"])))
    return atomic_write(path, doc)


def _fmt(v: Any, pattern: str = "%.5f") -> str:
    return "-" if v is None else pattern % v


def _fmt_pct(v: Any) -> str:
    return "-" if v is None else "%.2f%%" % (100.0 * v)
