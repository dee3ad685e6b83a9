"""The confidence part of the HTML reports (``report.html`` of convert, ``calibration.html`` of calibrate):
reliability diagrams before and after temperature scaling, the risk-coverage curve and the selective table, per
artifact. Inline SVG, no scripts."""
import html
from typing import Any, Dict, List, Optional, Sequence, Tuple

COLORS = ("#c44e52", "#4c72b0")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else "%.1f%%" % (100.0 * v)


def lines_svg(series: Sequence[Tuple[str, List[Tuple[float, float]]]], title: str, xlabel: str, ylabel: str,
              cls: str, diagonal: bool = False) -> str:
    """Polylines with markers on [0, 1] x [0, 1]."""
    left, top, size = 50, 30, 220
    w, h = left + size + 170, top + size + 45

    def xy(x: float, y: float) -> Tuple[float, float]:
        return left + x * size, top + size - y * size

    parts = ['<svg class="plot %s" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" '
             'aria-label="%s">' % (cls, w, h, _esc(title)),
             '<text x="%d" y="18" font-weight="bold">%s</text>' % (left, _esc(title)),
             '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (left, top, size, size),
             '<text x="%d" y="%d" font-size="11" text-anchor="middle">%s</text>' % (left + size / 2, h - 8,
                                                                                    _esc(xlabel)),
             '<text x="12" y="%d" font-size="11" transform="rotate(-90 12 %d)" text-anchor="middle">%s</text>'
             % (top + size / 2, top + size / 2, _esc(ylabel))]
    for t in (0.0, 0.5, 1.0):
        parts.append('<text x="%d" y="%d" font-size="10" text-anchor="end">%.1f</text>' % (left - 4, xy(0, t)[1] + 3,
                                                                                          t))
        parts.append('<text x="%d" y="%d" font-size="10" text-anchor="middle">%.1f</text>' % (xy(t, 0)[0],
                                                                                             top + size + 14, t))
    if diagonal:
        parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999" stroke-dasharray="4 3"/>'
                     % (xy(0, 0) + xy(1, 1)))
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        coords = " ".join("%.1f,%.1f" % xy(x, y) for x, y in pts)
        parts.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="1.5"/>' % (coords, color))
        parts.extend('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"><title>%s: %.3f, %.3f</title></circle>'
                     % (xy(x, y) + (color, _esc(name), x, y)) for x, y in pts)
        parts.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" font-size="11">%s'
                     '</text>' % (left + size + 12, top + 15 * i, color, left + size + 27, top + 15 * i + 9,
                                  _esc(name)))
    parts.append("</svg>")
    return "".join(parts)


def _bins(rel: List[Dict[str, Any]]) -> List[Tuple[float, float]]:
    return [(b["confidence"], b["accuracy"]) for b in rel if b["count"]]


def artifact_html(name: str, entry: Dict[str, Any], labels: Sequence[str]) -> str:
    fit, test = entry["fit"], entry.get("test")
    head = ("<h3>%s</h3><p>temperature %.4f; validation (%d images): ECE %.4f &rarr; %.4f%s</p>"
            % (_esc(name), fit["temperature"], fit["images"], fit["ece_before"], fit["ece_after"],
               "; goal not met (threshold 1.0, nothing accepted) for: %s" % _esc(", ".join(fit["unmet"]))
               if fit.get("unmet") else ""))
    plots = [lines_svg([("before", _bins(fit["reliability_before"])), ("after", _bins(fit["reliability_after"]))],
                       "Reliability (validation)", "confidence", "accuracy", "reliability", diagonal=True)]
    rows = ""
    if test:
        head += ("<p>test (%d images, reported only): top-1 %s, ECE %.4f &rarr; %.4f; accepted %d: precision %s, "
                 "coverage %s</p>" % (test["images"], _pct(test["top1"]), test["ece_before"], test["ece_after"],
                                      test["selective"]["accepted"], _pct(test["selective"]["precision"]),
                                      _pct(test["selective"]["coverage"])))
        plots.append(lines_svg([("calibrated", [(p["coverage"], p["risk"]) for p in test["risk_coverage"]])],
                               "Risk-coverage (test)", "coverage", "error rate", "risk-coverage"))
        per = test["selective"]["per_class"]
        rows = "".join("<tr><td>%s</td><td>%.4f</td><td>%d</td><td>%d</td><td>%s</td><td>%s</td></tr>" % (
            _esc(label), per[label]["threshold"], per[label]["predicted"], per[label]["accepted"],
            _pct(per[label]["precision"]), _pct(per[label]["coverage"])) for label in labels if label in per)
        rows = ('<table class="selective"><tr><th>class</th><th>threshold</th><th>predicted</th><th>accepted</th>'
                '<th>precision</th><th>coverage</th></tr>%s</table>' % rows)
    return '%s<div class="row">%s</div>%s' % (head, "".join(plots), rows)


def section_html(section: Optional[Dict[str, Any]], labels: Sequence[str]) -> str:
    if not section:
        return ""
    if section.get("skipped"):
        return '<h2>Confidence</h2><p id="confidence">%s</p>' % _esc(section["skipped"])
    intro = ("<p>Fitted on %s%s; goal: %s.</p>" % (_esc(section["validation_set"]), "; reported on %s"
                                                     % _esc(section["test_set"]) if section.get("test_set") else
                                                     " (no --test split: nothing reported on held-out images)",
                                                     _esc(section.get("goal") or "temperature only")))
    return '<h2>Confidence</h2><div id="confidence">%s%s</div>' % (intro, "".join(
        artifact_html(f, e, labels) for f, e in section["artifacts"].items()))
