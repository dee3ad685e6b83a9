"""The pictures in docs/monitoring.md and docs/home-assistant.md, from a real agent run: not Grafana, not Home
Assistant (neither runs on these machines), but their inputs drawn as they lay them out.

    .venv/bin/python docs/screenshots/make.py [--seconds 90]    # writes docs/img/grafana-dashboard.png,
                                                                 #        docs/img/home-assistant-entities.png

It starts mosquitto and the agent on the example config (examples/agent.yaml: the digits camera and the two-wheel
counter with two regions, Home Assistant discovery and /metrics on), scrapes /metrics every 2 s, and keeps the
retained discovery configs and states. Then:
- the dashboard: every panel of docs/grafana/edgesight-agent.json at its grid position, each target's PromQL
  evaluated over the scrapes (instant vectors, ``rate(...[w])`` and ``N * rate(...)``: the forms the dashboard
  uses) and drawn as lines (timeseries), last values (stat) or rows (table), with the panel's legend formats;
- Home Assistant: an entities card per device as Home Assistant lays one out, one row per discovered entity, its
  state rendered from the retained state topic by the entity's own ``value_template`` (Jinja2's sandbox, as Home
  Assistant renders it), with its attributes;
both as HTML pages, photographed by headless Chromium.
"""
import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)
from demo import free_port, start_broker  # noqa: E402  (the demo's mosquitto on a free loopback port)

SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
EXPR = re.compile(r'^(?:(\d+) \* )?(rate\()?(edgesight_\w+)\{([^}]*)\}(?:\[(\d+)([sm])\]\))?$')
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c", "#8ab8ff", "#ffb357", "#96d98d",
          "#ca95e5"]


def parse_metrics(text, instance):
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = dict(LABEL.findall(m.group(2) or ""), instance=instance)
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def evaluate(expr, scrapes):
    """{series key: (labels, [(t, value)])} of one target's expression over the scrapes [(t, samples)]."""
    m = EXPR.match(expr.strip())
    if not m:
        raise ValueError("this renderer does not evaluate %r" % expr)
    factor, rate, name, matchers, window, unit = m.groups()
    want = {k: v for k, v in LABEL.findall(matchers) if not v.startswith("$")}
    raw = {}
    for t, samples in scrapes:
        for n, labels, v in samples:
            if n == name and all(labels.get(k) == v for k, v in want.items()):
                key = tuple(sorted(labels.items()))
                raw.setdefault(key, (labels, []))[1].append((t, v))
    if not rate:
        return raw
    span = int(window) * (60 if unit == "m" else 1)
    out = {}
    for key, (labels, points) in raw.items():
        series = []
        for i, (t, v) in enumerate(points):
            first = next((p for p in points[:i] if p[0] >= t - span), None)
            if first is not None and t > first[0]:
                series.append((t, float(factor or 1) * max(0.0, v - first[1]) / (t - first[0])))
        out[key] = (labels, series)
    return out


def legend(fmt, labels):
    return re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), fmt or "").strip()


def fmt_value(v, unit):
    if unit == "percentunit":
        return "%.0f%%" % (100 * v)
    if unit == "bytes":
        return "%.0f MiB" % (v / 2 ** 20) if v >= 2 ** 20 else "%.0f B" % v
    if unit == "ms":
        return "%.1f ms" % v
    return "%.3g" % v


def svg_lines(series, unit, width, height):
    points = [p for _, pts in series for p in pts]
    if not points:
        return '<div class="nodata">No data</div>'
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    lo, hi = min(0.0, min(p[1] for p in points)), max(p[1] for p in points) or 1.0
    hi = hi * 1.1
    pad = 52

    def xy(t, v):
        x = pad + (width - pad - 8) * ((t - t0) / ((t1 - t0) or 1))
        y = 6 + (height - 26) * (1 - (v - lo) / ((hi - lo) or 1))
        return "%.1f,%.1f" % (x, y)

    parts = ['<svg width="%d" height="%d">' % (width, height)]
    for frac in (0, 0.5, 1):
        v = lo + frac * (hi - lo)
        y = 6 + (height - 26) * (1 - frac)
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="grid"/>' % (pad, y, width - 8, y))
        parts.append('<text x="%d" y="%.1f" class="axis" text-anchor="end">%s</text>' % (pad - 4, y + 4,
                                                                                      fmt_value(v, unit)))
    parts.append('<text x="%d" y="%d" class="axis">%s</text>' % (pad, height - 4, time.strftime(
        "%H:%M:%S", time.localtime(t0))))
    parts.append('<text x="%d" y="%d" class="axis" text-anchor="end">%s</text>' % (width - 8, height - 4,
                                                                                time.strftime("%H:%M:%S",
                                                                                              time.localtime(t1))))
    for i, (_, pts) in enumerate(series):
        if pts:
            parts.append('<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>' % (
                COLORS[i % len(COLORS)], " ".join(xy(t, v) for t, v in pts)))
    parts.append("</svg>")
    return "".join(parts)


def panel_html(panel, scrapes, col):
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
    width, height = panel["gridPos"]["w"] * col - 12, panel["gridPos"]["h"] * 34 - 12
    series = []
    for target in panel["targets"]:
        for labels, pts in evaluate(target["expr"], scrapes).values():
            series.append((legend(target.get("legendFormat"), labels), pts))
    series.sort(key=lambda s: s[0])
    if panel["type"] == "timeseries":
        body = svg_lines(series, unit, width - 16, height - 84)
        body += '<div class="legend">%s</div>' % "".join(
            '<span><i style="background:%s"></i>%s</span>' % (COLORS[i % len(COLORS)], html.escape(name))
            for i, (name, _) in enumerate(series[:12]))
    elif panel["type"] == "stat":
        body = '<div class="stats">%s</div>' % "".join(
            '<div class="stat %s"><b>%s</b><small>%s</small></div>' % (
                "up" if pts and pts[-1][1] >= 1 else "down", fmt_value(pts[-1][1], unit) if pts else "-",
                html.escape(name)) for name, pts in series)
    else:  # table: one row per series, its last value
        body = '<table>%s</table>' % "".join("<tr><td>%s</td><td>%s</td></tr>" % (
            html.escape(name), fmt_value(pts[-1][1], unit) if pts else "-") for name, pts in series)
    g = panel["gridPos"]
    return ('<div class="panel" style="left:%dpx;top:%dpx;width:%dpx;height:%dpx"><h3>%s</h3>%s</div>'
            % (g["x"] * col + 6, g["y"] * 34 + 6, width, height, html.escape(panel["title"]), body))


def dashboard_page(dash, scrapes, col=58):
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    panels = "".join(panel_html(p, scrapes, col) for p in dash["panels"])
    return """<html><head><style>
body{margin:0;background:#111217;color:#ccccdc;font:12px Inter,Helvetica,Arial,sans-serif}
header{height:40px;line-height:40px;padding:0 16px;font-size:16px;border-bottom:1px solid #2c2f36}
header small{color:#8e8e9e;margin-left:16px;font-size:12px}
#grid{position:relative;height:%dpx}
.panel{position:absolute;background:#181b1f;border:1px solid #2c2f36;border-radius:2px;padding:0 8px;overflow:hidden}
.panel h3{font-size:13px;font-weight:500;margin:6px 0}
.grid{stroke:#2c2f36}.axis{fill:#8e8e9e;font-size:10px}
.legend span{display:inline-block;margin:2px 10px 0 0;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:3px;margin:0 4px 3px 0}
.stats{display:flex;flex-wrap:wrap;gap:6px}.stat{flex:1;min-width:120px;padding:8px;border-radius:2px}
.stat b{display:block;font-size:26px}.stat.up{background:#1f6f2c}.stat.down{background:#8f1f1f}
table{width:100%%;border-collapse:collapse}td{border-bottom:1px solid #2c2f36;padding:4px}
.nodata{color:#8e8e9e;padding:40px;text-align:center}
</style></head><body><header>%s<small>rendered by docs/screenshots/make.py from the dashboard JSON and real
/metrics scrapes (not Grafana)</small></header><div id="grid">%s</div></body></html>""" % (
        bottom * 34 + 12, html.escape(dash["title"]), panels)


ICON = ('<svg class="icon" viewBox="0 0 24 24" width="24" height="24"><rect x="3" y="7" width="13" height="10" rx="2"'
        ' fill="#44739e"/><path d="M16 10l5-3v10l-5-3z" fill="#44739e"/></svg>')  # a camera, drawn here


def ha_page(configs, states):
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    rows = []
    device = None
    for topic in sorted(configs):
        cfg = configs[topic]
        device = cfg["device"]
        state = states.get(cfg["state_topic"])
        value = env.from_string(cfg["value_template"]).render(value_json=state).strip() if state else "unknown"
        attrs = json.loads(env.from_string(cfg["json_attributes_template"]).render(value_json=state)) \
            if state else {}
        kind = topic.split("/")[1]
        # the entity id Home Assistant derives for an MQTT entity with a device: <domain>.<device name> <name>
        entity_id = "%s.%s" % (kind, re.sub(r"[^a-z0-9]+", "_", ("%s %s" % (device["name"], cfg["name"])).lower())
                               .strip("_"))
        rows.append('<div class="row">%s<div class="name">%s<small>%s</small></div><div class="state">%s<small>'
                    'score %s</small></div></div>' % (ICON, html.escape(cfg["name"]), entity_id, html.escape(value),
                                                      attrs.get("score", "-")))
    return """<html><head><style>
body{margin:0;background:#fafafa;font:14px Roboto,Helvetica,Arial,sans-serif;color:#212121;padding:24px}
.card{width:520px;background:#fff;border-radius:12px;box-shadow:0 2px 6px rgba(0,0,0,.15);padding:16px}
.card h2{font-size:20px;font-weight:400;margin:0 0 4px}.card p{color:#727272;margin:0 0 12px;font-size:12px}
.row{display:flex;align-items:center;height:52px}.icon{margin-right:16px}
.name{flex:1}.name small,.state small{display:block;color:#727272;font-size:11px}.state{text-align:right}
.note{color:#727272;font-size:11px;margin-top:12px;width:540px}
</style></head><body><div class="card"><h2>%s</h2><p>%s &middot; %s &middot; %s</p>%s</div>
<div class="note">Drawn by docs/screenshots/make.py from the retained discovery configs and states of a real agent
run, laid out as Home Assistant's entities card shows them (not a screenshot of Home Assistant).</div>
</body></html>""" % (html.escape(device["name"]), html.escape(device["manufacturer"]), html.escape(device["model"]),
                     html.escape(device["sw_version"]), "".join(rows))


def photograph(page, png, width, height):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium is needed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        path = os.path.join(profile, "page.html")
        with open(path, "w") as f:
            f.write(page)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        "--user-data-dir=" + profile, "--window-size=%d,%d" % (width, height),
                        "--screenshot=" + png, "file://" + path], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)


def run_agent(work, seconds):
    """(scrapes, retained discovery configs, retained states) of the example config running ``seconds``."""
    import paho.mqtt.client as mqtt

    port, metrics_port = free_port(), free_port()
    broker = start_broker(work, port)
    with open(os.path.join(EXAMPLES, "agent.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["package"] = os.path.join(EXAMPLES, "digits", "package")
    for cam in cfg["cameras"]:
        cam["source"]["path"] = os.path.join(EXAMPLES, cam["source"]["path"])
    cfg.update(mqtt=dict(cfg["mqtt"], port=port, host="127.0.0.1"), outbox={"path": os.path.join(work, "ob.db")},
               metrics={"enabled": True, "port": metrics_port}, home_assistant={"enabled": True},
               stats={"interval": 5})
    path = os.path.join(work, "agent.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    retained, lock = {}, threading.Lock()

    def on_message(client, userdata, msg):
        if msg.payload and (msg.topic.startswith("homeassistant/") or msg.topic.endswith("/state")):
            with lock:
                retained[msg.topic] = json.loads(msg.payload)

    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe([("homeassistant/#", 1), ("edgesight/#", 1)])
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    agent = subprocess.Popen([sys.executable, "-m", "edgesight", "agent", "--config", path],
                             stderr=subprocess.DEVNULL)
    scrapes = []
    try:
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(2)
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=2).read()
            except OSError:
                continue
            scrapes.append((time.time(), parse_metrics(text.decode(), "%s:%d" % (cfg["device_id"], metrics_port))))
    finally:
        agent.terminate()
        agent.wait(60)
        sub.loop_stop()
        broker.terminate()
        broker.wait(10)
    with lock:
        configs = {t: p for t, p in retained.items() if t.startswith("homeassistant/")}
        states = {t: p for t, p in retained.items() if not t.startswith("homeassistant/")}
    return scrapes, configs, states


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="edgesight-shots-")
    try:
        scrapes, configs, states = run_agent(work, args.seconds)
        with open(os.path.join(ROOT, "docs", "grafana", "edgesight-agent.json")) as f:
            dash = json.load(f)
        photograph(dashboard_page(dash, scrapes), os.path.join(args.out, "grafana-dashboard.png"), 1410, 1700)
        photograph(ha_page(configs, states), os.path.join(args.out, "home-assistant-entities.png"), 600,
                   200 + 52 * len(configs))
        print("%d scrapes over %.0f s, %d entities: %s" % (len(scrapes), args.seconds, len(configs), args.out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
