#!/usr/bin/python3
"""Checks the deploy files against the binaries they configure: every flag
in a flags file is one fabric-agent knows, every conflist parses and chains
fabric-nat after an interface plugin with keys fabric-nat reads, and the
Kubernetes manifest parses. Run by Bazel (//deploy:deploy_test)."""
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", "."), os.environ.get("TEST_WORKSPACE", ""))
AGENT = os.path.join(ROOT, "agent/fabric-agent")
NAT_KEYS = {"type", "capabilities", "agentSocket", "masquerade", "hairpin", "localhost"}


def known_flags():
    out = subprocess.run([AGENT, "--helpfull"], capture_output=True, text=True).stdout
    flags = set()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("--"):
            flags.add(line[2:].split(" ")[0].split("=")[0].rstrip(";"))
    return flags


def check_flags(text, where, flags, failures):
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line[2:].split("=")[0]
        if name not in flags:
            failures.append(f"{where}: unknown flag --{name}")


def check_conflist(conf, where, failures):
    plugins = conf.get("plugins", [])
    types = [p.get("type") for p in plugins]
    if "fabric-nat" not in types:
        failures.append(f"{where}: no fabric-nat plugin")
        return
    if types.index("fabric-nat") == 0:
        failures.append(f"{where}: fabric-nat is chained; a plugin must make the interface first")
    nat = plugins[types.index("fabric-nat")]
    for key in nat:
        if key not in NAT_KEYS:
            failures.append(f"{where}: fabric-nat does not read key {key!r}")
    if not nat.get("capabilities", {}).get("portMappings"):
        failures.append(f"{where}: fabric-nat needs the portMappings capability")


def main():
    failures = []
    flags = known_flags()
    if "socket" not in flags:
        print(f"could not read fabric-agent's flags from {AGENT}")
        return 1
    check_flags(open(os.path.join(ROOT, "deploy/systemd/agent.flags")).read(),
                "deploy/systemd/agent.flags", flags, failures)
    check_conflist(json.load(open(os.path.join(ROOT, "deploy/cni/10-fabric.conflist"))),
                   "deploy/cni/10-fabric.conflist", failures)
    docs = list(yaml.safe_load_all(open(os.path.join(ROOT, "deploy/kubernetes/fabric-nat.yaml"))))
    kinds = [d["kind"] for d in docs]
    for want in ("DaemonSet", "ConfigMap"):
        if want not in kinds:
            failures.append(f"fabric-nat.yaml: no {want}")
    for d in docs:
        if d["kind"] == "ConfigMap":
            check_flags(d["data"]["agent.flags"], "ConfigMap agent.flags", flags, failures)
            check_conflist(json.loads(d["data"]["10-fabric.conflist"]), "ConfigMap conflist", failures)
    for f in failures:
        print(f)
    print(f"{len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
