#!/usr/bin/python3
"""Checks deploy/grafana/fabric-nat-dashboard.json against a live agent.

1. The dashboard is one a Grafana 10 imports: schemaVersion, uid, a
   Prometheus data source variable every panel and target uses, unique panel
   ids and refIds, panels inside the 24-column grid, every `$variable` an
   expression uses defined.
2. Every PromQL expression (panel targets and the variables' label_values
   queries) parses: `promtool check rules` over them as recording rules.
3. Every metric name an expression uses is one the agent exports: the names
   come from a LIVE fabric-agent's /metrics (started in a network namespace
   of its own, with mappings, a refused request and a repair, so that every
   family has samples), not from a list kept here. `up` is the one series
   allowed besides: Prometheus makes it for every target it scrapes. The
   /metrics text also passes `promtool check metrics`.
4. Debian's Prometheus scrapes that agent every second while it serves
   traffic, and every expression, evaluated there, returns data (the
   variables: the label they list is on the series).

The name check is also run once on a copy with a wrong name, which must fail
naming it. Root (network namespaces); run by Bazel
(//deploy/grafana:dashboard_test).
"""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", "."), os.environ.get("TEST_WORKSPACE", ""))
DASHBOARD = os.path.join(ROOT, "deploy/grafana/fabric-nat-dashboard.json")
AGENT = os.path.join(ROOT, "agent/fabric-agent")
FABRICCTL = os.path.join(ROOT, "agent/fabricctl")
METRICS = "127.0.0.1:19333"
PROMETHEUS = "127.0.0.1:19090"
# nft, ip: Bazel's PATH leaves out the sbin directories.
os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
# Series Prometheus itself makes for every scrape target.
SCRAPE_SERIES = {"up"}
# Grafana's own variables, as a range they stand for.
GRAFANA_RANGES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
               "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


# ---- the dashboard ---------------------------------------------------------

def all_panels(d):
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its own


def variables(d):
    return {v["name"]: v for v in d.get("templating", {}).get("list", [])}


def expressions(d):
    """(where, expr, label) for every PromQL expression: panel targets, and
    the series of label_values(SERIES, LABEL) variable queries."""
    out = []
    for p in all_panels(d):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f'panel "{p.get("title")}" target {t.get("refId")}', t["expr"], None))
    for name, v in variables(d).items():
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_]\w*)\s*\)\s*", q or "")
        if not m:
            fail(f'variable "{name}": expected label_values(SERIES, LABEL), not {q!r}')
        out.append((f'variable "{name}"', m.group(1), m.group(2)))
    return out


def check_structure(d):
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        fail(f"schemaVersion {d.get('schemaVersion')!r}: Grafana 10 writes 38")
    for key in ("title", "uid"):
        if not d.get(key):
            fail(f"the dashboard has no {key}")
    if len(d["uid"]) > 40:
        fail(f"uid {d['uid']!r} is longer than Grafana's 40 characters")
    vs = variables(d)
    ds = vs.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail('templating needs a "datasource" variable of type datasource, query "prometheus"')
    want = {"type": "prometheus", "uid": "${datasource}"}
    ids, cells = set(), {}
    for p in all_panels(d):
        where = f'panel {p.get("id")} "{p.get("title")}"'
        if p.get("id") in ids or not isinstance(p.get("id"), int):
            fail(f"{where}: ids must be unique integers")
        ids.add(p["id"])
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            fail(f"{where}: gridPos {g} is outside the 24-column grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    fail(f"{where}: overlaps panel {cells[(x, y)]}")
                cells[(x, y)] = p["id"]
        if p.get("type") == "row":
            continue
        if p.get("type") not in ("stat", "timeseries", "gauge", "table", "bargauge", "text"):
            fail(f"{where}: unexpected panel type {p.get('type')!r}")
        if not p.get("title"):
            fail(f"{where}: no title")
        targets = p.get("targets", [])
        if not targets:
            fail(f"{where}: no targets")
        if p.get("datasource") != want:
            fail(f"{where}: datasource {p.get('datasource')} is not {want}")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            fail(f"{where}: refIds {refs} must be present and unique")
        for t in targets:
            if t.get("datasource") != want:
                fail(f"{where} target {t.get('refId')}: datasource is not {want}")
    for name, v in vs.items():
        if v.get("type") == "query" and v.get("datasource") != want:
            fail(f'variable "{name}": datasource is not {want}')


def substitute(expr, d, where):
    """Grafana variables replaced: ranges by a duration, the dashboard's own
    variables by their "All" value."""
    vs = variables(d)

    def one(m):
        name = m.group(1) or m.group(2)
        if name in GRAFANA_RANGES:
            return GRAFANA_RANGES[name]
        if name not in vs:
            fail(f"{where}: ${name} is not a variable of the dashboard: {expr}")
        return vs[name].get("allValue") or ".*"
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# ---- PromQL ----------------------------------------------------------------

def tokens(expr):
    """(kind, text) tokens; label matchers, ranges and strings are kept
    whole, and a matcher block's __name__ values come out as names."""
    out, i, n = [], 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and expr[i] != "\n":
                i += 1
        elif c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            if j >= n:
                raise ValueError(f"unterminated string in {expr!r}")
            out.append(("str", expr[i + 1:j]))
            i = j + 1
        elif c == "{":
            j, inner = i + 1, []
            while j < n and expr[j] != "}":
                if expr[j] in "\"'`":
                    q, k = expr[j], j + 1
                    while k < n and expr[k] != q:
                        k += 2 if expr[k] == "\\" and q != "`" else 1
                    inner.append(expr[j:k + 1])
                    j = k + 1
                else:
                    inner.append(expr[j])
                    j += 1
            if j >= n:
                raise ValueError(f"unterminated {{ in {expr!r}")
            out.append(("matchers", "".join(inner)))
            i = j + 1
        elif c == "[":
            j = expr.index("]", i)
            out.append(("range", expr[i + 1:j]))
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = re.compile(r"0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
                           r"(?:ms|s|m|h|d|w|y)*").match(expr, i)
            out.append(("num", m.group(0)))
            i = m.end()
        elif c.isalpha() or c in "_:":
            m = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*").match(expr, i)
            out.append(("id", m.group(0)))
            i = m.end()
        else:
            out.append(("op", c))
            i += 1
    return out


def metric_names(expr):
    """The metric names a PromQL expression selects: identifiers that are
    not functions, aggregations, keywords or label names, and __name__
    matchers."""
    names, ts, k = set(), tokens(expr), 0
    while k < len(ts):
        kind, text = ts[k]
        nxt = ts[k + 1] if k + 1 < len(ts) else ("", "")
        if kind == "matchers":
            for m in re.finditer(r'__name__\s*=\s*"([^"]*)"', text):
                names.add(m.group(1))
        elif kind == "id":
            low = text.lower()
            if low in LABEL_LISTS and nxt == ("op", "("):
                while k < len(ts) and ts[k] != ("op", ")"):
                    k += 1
            elif nxt == ("op", "(") or low in KEYWORDS or low in AGGREGATORS:
                pass
            else:
                names.add(text)
        k += 1
    return names


def self_test_extractor():
    cases = {
        'sum by (le) (rate(x_bucket{a="b}", le!=""}[5m]))': {"x_bucket"},
        'time() - max(y{j=~"$job"} > 0)': {"y"},
        '{__name__="z", a="1"}': {"z"},
        "a / on (x) group_left (y) b * 60": {"a", "b"},
        'histogram_quantile(0.99, sum without (op) (rate(h_bucket[5m] offset 1m)))': {"h_bucket"},
        'count_values("v", q) and bool_metric == bool 1e-3': {"q", "bool_metric"},
        "sum(rate(s_sum[5m])) / sum(rate(s_count[5m]))": {"s_sum", "s_count"},
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        if got != want:
            fail(f"the PromQL name extractor is wrong on {expr!r}: {sorted(got)}, want "
                 f"{sorted(want)}")


def check_names(d, exported):
    """Problems: every expression's metric names against `exported`."""
    problems = []
    for where, expr, _ in expressions(d):
        names = metric_names(substitute(expr, d, where))
        if not names:
            problems.append(f"{where}: names no metric: {expr}")
        for name in sorted(names - exported - SCRAPE_SERIES):
            problems.append(f'{where}: metric "{name}" is not one the agent exports '
                            f"(its /metrics has {', '.join(sorted(exported))}): {expr}")
    return problems


def promtool_check_rules(d, work):
    path = os.path.join(work, "dashboard_rules.yml")
    with open(path, "w") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for i, (where, expr, _) in enumerate(expressions(d)):
            f.write(f"      - record: dashboard:expr_{i}\n")
            f.write(f"        expr: {json.dumps(substitute(expr, d, where))}\n")
    r = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"promtool check rules on the dashboard's expressions:\n{r.stdout}{r.stderr}")
    print(f"promtool check rules: {r.stdout.strip().splitlines()[-1]}")


# ---- the live agent --------------------------------------------------------

class Namespace:
    def __init__(self):
        self.name = f"fgd-{os.getpid()}"
        self.procs = []

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        subprocess.run(["ip", "netns", "del", self.name])

    def run(self, args, check=True):
        r = subprocess.run(["ip", "netns", "exec", self.name] + args, capture_output=True,
                           text=True)
        if check and r.returncode != 0:
            fail(f"{' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def spawn(self, args, log):
        p = subprocess.Popen(["ip", "netns", "exec", self.name] + args,
                             stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def get(self, url):
        return self.run(["curl", "-sf", "--max-time", "5", url], check=False)


def wait_for(what, predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    fail(f"timed out waiting for {what}")


def start_agent(ns, work):
    log = os.path.join(work, "agent.log")
    sock = os.path.join(work, "agent.sock")
    p = ns.spawn([AGENT, "--socket", sock, "--state_dir", os.path.join(work, "state"),
                  "--run_dir", os.path.join(work, "run"), f"--metrics_address={METRICS}",
                  "--reconcile_interval=0"], log)

    def serving():
        if p.poll() is not None:
            fail(f"fabric-agent exited {p.returncode}: {open(log).read()}")
        return "serving unix:" in open(log).read()
    wait_for("fabric-agent to serve", serving)
    return sock


def ctl(ns, sock, *args, ok=True):
    r = ns.run([FABRICCTL, "--socket", sock] + list(args), check=False)
    if (r.returncode == 0) != ok:
        fail(f"fabricctl {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r.stdout


def exported_names(ns, sock):
    """Sample names of the agent's /metrics, once every family has some, and
    `promtool check metrics` on that text."""
    ctl(ns, sock, "add", "tcp", "8080", "10.1.0.5:80", "--owner", "web")
    ctl(ns, sock, "add", "tcp", "8080", "10.1.0.6:80", "--owner", "other", ok=False)
    ns.run(["nft", "flush", "ruleset"])  # the agent repairs it
    text = {}

    def repaired():
        text["m"] = ns.get(f"http://{METRICS}/metrics").stdout
        return re.search(r"^nat_repairs_total [1-9]", text["m"], re.M) is not None
    wait_for("a repair in /metrics", repaired, timeout=10)
    r = subprocess.run(["promtool", "check", "metrics"], input=text["m"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        fail(f"promtool check metrics on the agent's /metrics:\n{r.stdout}{r.stderr}")
    names = set()
    for line in text["m"].splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    families = set(re.findall(r"^# TYPE (\S+) ", text["m"], re.M))
    return names, families


def prometheus_evaluates(ns, sock, d, work):
    """Every expression, evaluated by a Prometheus that scraped the agent
    while it served traffic, returns data."""
    cfg = os.path.join(work, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: fabric-nat\n"
                f"    static_configs: [{{targets: ['{METRICS}']}}]\n")
    log = os.path.join(work, "prometheus.log")
    p = ns.spawn(["prometheus", f"--config.file={cfg}",
                  f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                  f"--web.listen-address={PROMETHEUS}"], log)

    def ready():
        if p.poll() is not None:
            fail(f"prometheus exited {p.returncode}: {open(log).read()[-3000:]}")
        return ns.get(f"http://{PROMETHEUS}/-/ready").returncode == 0
    wait_for("prometheus to be ready", ready, timeout=60)

    def query(expr):
        r = ns.run(["curl", "-sf", "--max-time", "10", "-G", f"http://{PROMETHEUS}/api/v1/query",
                    "--data-urlencode", f"query={expr}"], check=False)
        if r.returncode != 0:
            fail(f"prometheus refused {expr!r} (curl exit {r.returncode}): {r.stdout}")
        body = json.loads(r.stdout)
        if body.get("status") != "success":
            fail(f"prometheus: {expr!r}: {body}")
        return body["data"]["result"]

    def scrapes():
        return max([float(s["value"][1]) for s in query(
            'count_over_time(up{job="fabric-nat"}[1m])')] or [0])
    # Prometheus applies its targets some seconds after it is ready.
    wait_for("a first scrape", lambda: scrapes() >= 1, timeout=30)
    # Traffic across several scrapes: mappings made and removed, refusals, a
    # repair.
    for i in range(12):
        out = ctl(ns, sock, "add", "tcp", str(9000 + i), "10.1.0.7:80", "--owner", "load")
        ctl(ns, sock, "add", "tcp", "8080", "10.1.0.8:80", "--owner", "clash", ok=False)
        if i % 2:
            ctl(ns, sock, "remove", out.split()[0])
        if i == 6:
            ns.run(["nft", "flush", "ruleset"])
        time.sleep(0.4)
    seen = scrapes()
    wait_for("a scrape after the traffic", lambda: scrapes() >= seen + 2, timeout=30)
    for where, expr, label in expressions(d):
        e = substitute(expr, d, where)
        result = query(e)
        if not result:
            fail(f"{where}: {e} returns nothing from Prometheus scraping a live agent")
        if label and not any(label in s["metric"] for s in result):
            fail(f"{where}: no series of {e} has the label {label!r}")
        print(f"prometheus: {where}: {len(result)} series")


def main():
    with open(DASHBOARD) as f:
        d = json.load(f)
    check_structure(d)
    self_test_extractor()
    work = tempfile.mkdtemp(prefix="fgd-", dir="/tmp")
    try:
        promtool_check_rules(d, work)
        if os.geteuid() != 0:
            fail("needs root (network namespaces)")
        with Namespace() as ns:
            sock = start_agent(ns, work)
            exported, families = exported_names(ns, sock)
            print(f"the live agent's /metrics: {', '.join(sorted(exported))}")
            problems = check_names(d, exported)
            if problems:
                fail("the dashboard uses metrics the agent does not export:\n  " +
                     "\n  ".join(problems))
            # The check itself: a wrong name must be named.
            broken = copy.deepcopy(d)
            target = next(t for p in all_panels(broken) for t in p.get("targets", [])
                          if "nat_rules" in t.get("expr", ""))
            target["expr"] = target["expr"].replace("nat_rules", "nat_rules_total")
            said = check_names(broken, exported)
            if len(said) != 1 or 'metric "nat_rules_total" is not one the agent exports' \
                    not in said[0]:
                fail(f"a dashboard using nat_rules_total was not refused by name: {said}")
            used = set().union(*(metric_names(substitute(e, d, w)) for w, e, _ in expressions(d)))
            for family in sorted(families):
                if not any(u == family or u.startswith(family + "_") for u in used):
                    print(f"note: the dashboard shows nothing of {family}")
            prometheus_evaluates(ns, sock, d, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
