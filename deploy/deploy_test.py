#!/usr/bin/python3
"""Checks the deploy files against the binaries they configure: every flag
in a flags file, in a container's command line (the agent, install-cni) and
in a probe (fabricctl) is one that binary knows, every subcommand exists,
every conflist parses and chains fabric-nat after an interface plugin with
keys fabric-nat reads, and the Kubernetes manifest parses (its schema is
checked by //deploy:kubernetes_validate_test). Run by Bazel
(//deploy:deploy_test)."""
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", "."), os.environ.get("TEST_WORKSPACE", ""))
AGENT = os.path.join(ROOT, "agent/fabric-agent")
FABRICCTL = os.path.join(ROOT, "agent/fabricctl")
# Subcommands the deploy files run, by binary.
SUBCOMMANDS = {"fabric-agent": {"install-cni"}, "fabricctl": {"health"}}
NAT_KEYS = {"type", "capabilities", "agentSocket", "masquerade", "hairpin", "localhost"}


def known_flags(binary=AGENT):
    out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True).stdout
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


def usage_words(binary):
    """The words of a binary's --help and --helpfull: its usage message and
    flag descriptions, where its subcommands are named."""
    text = ""
    for arg in ("--help", "--helpfull"):
        out = subprocess.run([binary, arg], capture_output=True, text=True)
        text += out.stdout + out.stderr
    for ch in "|()[]:;,":
        text = text.replace(ch, " ")
    return set(text.split())


def check_argv(argv, where, flags, failures):
    """A command line from a manifest: the binary's flags and subcommand."""
    name = os.path.basename(argv[0]) if argv else ""
    if name not in flags:
        failures.append(f"{where}: runs {argv[0] if argv else 'nothing'}, not a Fabric NAT binary")
        return
    known, usage = flags[name]
    for arg in argv[1:]:
        if arg.startswith("--"):
            flag = arg[2:].split("=")[0]
            if flag not in known:
                failures.append(f"{where}: {name} has no flag --{flag}")
        elif arg in SUBCOMMANDS.get(name, set()):
            if arg not in usage:
                failures.append(f"{where}: {name} has no subcommand {arg}")
        else:
            failures.append(f"{where}: {name}: unexpected argument {arg!r}")


def check_pod(pod, where, flags, failures):
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        check_argv(c.get("command", []) + c.get("args", []), cw, flags, failures)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c and "exec" in c[probe]:
                check_argv(c[probe]["exec"]["command"], f"{cw} {probe}", flags, failures)


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
    binaries = {
        "fabric-agent": (flags, usage_words(AGENT)),
        "fabricctl": (known_flags(FABRICCTL), usage_words(FABRICCTL)),
    }
    for d in docs:
        if d["kind"] == "DaemonSet":
            check_pod(d["spec"]["template"]["spec"], f"DaemonSet {d['metadata']['name']}",
                      binaries, failures)
        if d["kind"] == "ConfigMap":
            check_flags(d["data"]["agent.flags"], "ConfigMap agent.flags", flags, failures)
            check_conflist(json.loads(d["data"]["10-fabric.conflist"]), "ConfigMap conflist", failures)
    for f in failures:
        print(f)
    print(f"{len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
