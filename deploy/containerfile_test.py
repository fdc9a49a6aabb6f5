#!/usr/bin/python3
"""Checks deploy/kubernetes/Containerfile against the binaries it ships: every
shared library `ldd` reports for fabric-agent, fabricctl and fabric-nat
belongs (`dpkg -S`) to a Debian package that the Containerfile's
`apt-get install` names, or to one that every debian:bookworm-slim already
has. The Containerfile itself cannot be built here (no registry); this is
what keeps it from starting with a missing library. Also checks that it
copies the three binaries and starts the agent. Run by Bazel
(//deploy:containerfile_test)."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", "."), os.environ.get("TEST_WORKSPACE", ""))
BINARIES = ["agent/fabric-agent", "agent/fabricctl", "cni/fabric-nat"]
CONTAINERFILE = "deploy/kubernetes/Containerfile"
BASE = "debian:bookworm-slim"
# In every bookworm-slim: libc6, and what dpkg and apt themselves link.
IN_BASE = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def shared_libraries(path):
    """The absolute paths ldd resolves for `path` (none for a static one)."""
    r = subprocess.run(["ldd", path], capture_output=True, text=True, env={"LC_ALL": "C"})
    text = r.stdout + r.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if r.returncode != 0:
        raise SystemExit(f"ldd {path}: {text.strip()}")
    libs = []
    for line in r.stdout.splitlines():
        if "not found" in line:
            raise SystemExit(f"ldd {path}: {line.strip()}")
        m = re.search(r"(?:=> )?(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def owners(libs):
    """{library: owning Debian package}, one `dpkg -S` for all, under every
    name merged /usr gives a file (/lib/... and /usr/lib/...)."""
    names = {}
    for lib in libs:
        real = os.path.realpath(lib)
        for name in (lib, real, real.removeprefix("/usr"), "/usr" + lib):
            names.setdefault(name, set()).add(lib)
    r = subprocess.run(["dpkg", "-S", *sorted(names)], capture_output=True, text=True)
    found = {}
    for line in r.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        for lib in names.get(path.strip(), ()):
            found.setdefault(lib, pkgs.split(",")[0].strip().split(":")[0])
    return found


def apt_packages(text):
    """(FROM image, packages of every `apt-get install`) in a Containerfile."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    base = None
    pkgs = set()
    for line in joined.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0].upper() == "FROM":
            base = words[1]
        if words[0].upper() != "RUN":
            continue
        for cmd in re.split(r"&&|;|\|\|", line):
            w = cmd.split()
            if "apt-get" in w and "install" in w[w.index("apt-get"):]:
                for arg in w[w.index("install", w.index("apt-get")) + 1:]:
                    if not arg.startswith("-"):
                        pkgs.add(arg.split("=")[0])
    return base, pkgs


def main():
    failures = []
    text = open(os.path.join(ROOT, CONTAINERFILE)).read()
    base, listed = apt_packages(text)
    if base != BASE:
        failures.append(f"{CONTAINERFILE}: FROM {base}, the binaries are built for {BASE}")
    if not listed:
        failures.append(f"{CONTAINERFILE}: no apt-get install list found")
    if not re.search(r"^COPY\s+fabric-agent\s+fabricctl\s+fabric-nat\s+/usr/local/bin/\s*$",
                     text, re.M):
        failures.append(f"{CONTAINERFILE}: does not COPY the three binaries to /usr/local/bin/")
    if not re.search(r'^ENTRYPOINT\s+\["/usr/local/bin/fabric-agent"\]\s*$', text, re.M):
        failures.append(f"{CONTAINERFILE}: ENTRYPOINT is not /usr/local/bin/fabric-agent")

    needed = {}  # package -> the libraries that need it
    libs = {b: shared_libraries(os.path.join(ROOT, b)) for b in BINARIES}
    owner = owners({lib for v in libs.values() for lib in v})
    for b in BINARIES:
        for lib in libs[b]:
            if lib not in owner:
                failures.append(f"{b}: {lib} belongs to no Debian package")
                continue
            needed.setdefault(owner[lib], set()).add(
                f"{os.path.basename(b)}: {os.path.basename(lib)}")
    if len(needed) < 5:
        failures.append(f"only {len(needed)} packages found for the binaries' libraries: "
                        "is ldd or dpkg broken?")
    for pkg in sorted(needed):
        if pkg in IN_BASE or pkg in listed:
            continue
        failures.append(f"{CONTAINERFILE}: apt-get install lacks {pkg} "
                        f"({', '.join(sorted(needed[pkg])[:3])})")
    extra = sorted(listed - set(needed))
    if extra:
        failures.append(f"{CONTAINERFILE}: installs {' '.join(extra)}, which no binary loads")

    print(f"{len(needed)} packages own the binaries' libraries: {' '.join(sorted(needed))}")
    for f in failures:
        print(f)
    print(f"{len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
