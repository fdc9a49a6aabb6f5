#!/usr/bin/python3
"""Assembles an OCI image archive from built binaries, with no registry, no
base image and no network (Debian's python3, standard library only).

  oci_image.py --out OUT.tar --bin PATH [--bin PATH ...] [--name fabric-nat:dev]
               [--entrypoint /usr/local/bin/fabric-agent]

Each --bin lands in /usr/local/bin under its own file name (or NAME=PATH).
Every shared library `ldd` reports for the binaries, and the dynamic loader,
is copied from this machine to the path ldd names, with the symlinks on the
way kept as symlinks (Debian's merged /usr: /lib -> usr/lib, /lib64 ->
usr/lib64), so the binaries run exactly as they do here, with no distro in
the image. Also added: the Debian copyright file of each package that owns
one of those libraries, minimal /etc files (passwd, group, hosts,
nsswitch.conf) and the directories the agent uses.

Layers: one for the runtime (loader, libraries, /etc), one for the binaries.
The output is deterministic: sorted entries, owner root, fixed mtimes
(SOURCE_DATE_EPOCH, default 0), gzip without name or time. The index names
the image (org.opencontainers.image.ref.name, which `podman load` tags as
localhost/NAME, and io.containerd.image.name for `ctr images import`).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/usr/local/bin/fabric-agent\n",
    "etc/group": "root:x:0:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    # glibc reads it for getaddrinfo; files and dns are built into libc.
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
# Mount points a runtime fills, and the directories the agent and the CNI
# install step use (mode, path).
DIRS = [
    (0o755, "dev"),
    (0o755, "proc"),
    (0o755, "sys"),
    (0o1777, "tmp"),
    (0o700, "root"),
    (0o755, "run"),
    (0o755, "run/fabric-nat"),
    (0o755, "var"),
    (0o755, "var/lib"),
    (0o755, "var/lib/fabric-nat"),
]


def ldd(path):
    """Absolute paths of the shared objects (and loader) `path` loads; empty
    for a static binary."""
    r = subprocess.run(["ldd", path], capture_output=True, text=True,
                       env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    text = r.stdout + r.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if r.returncode != 0:
        sys.exit(f"oci_image: ldd {path} failed: {text.strip()}")
    libs = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if "=> not found" in line:
            sys.exit(f"oci_image: {path}: {line}")
        m = re.match(r"^\S+ => (/\S+) \(0x", line) or re.match(r"^(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
        elif not line.startswith("linux-vdso") and not line.startswith("linux-gate"):
            sys.exit(f"oci_image: {path}: cannot read ldd line {line!r}")
    return libs


class Layer:
    """The entries of one layer tar, keyed by path without the leading /."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path -> ("dir", mode) | ("link", target) | ("file", mode, bytes)

    def add_dir(self, path, mode=0o755):
        path = path.strip("/")
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.add_dir(parent)
        if self.entries.get(path, ("dir",))[0] != "dir":
            sys.exit(f"oci_image: {path} is both a directory and a file")
        self.entries[path] = ("dir", mode)

    def add_file(self, path, data, mode):
        path = path.strip("/")
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.add_dir(parent)
        self.entries[path] = ("file", mode, data)

    def add_host_path(self, path):
        """Copies host file `path` to the same path, keeping every symlink met
        on the way (in a directory or the file itself) as a symlink."""
        parts = [p for p in path.split("/") if p]
        cur = "/"
        for i, part in enumerate(parts):
            nxt = os.path.join(cur, part)
            if os.path.islink(nxt):
                target = os.readlink(nxt)
                key = nxt.strip("/")
                if os.path.dirname(key) and os.path.dirname(key) not in self.entries:
                    self.add_dir(os.path.dirname(key))
                self.entries[key] = ("link", target)
                resolved = os.path.normpath(os.path.join(cur, target))
                return self.add_host_path(os.path.join(resolved, *parts[i + 1:]))
            if i < len(parts) - 1:
                if not os.path.isdir(nxt):
                    sys.exit(f"oci_image: {nxt} is not a directory")
                if nxt.strip("/") not in self.entries:
                    self.add_dir(nxt, 0o755)
            else:
                with open(nxt, "rb") as f:
                    data = f.read()
                self.add_file(nxt, data, os.stat(nxt).st_mode & 0o7777)
            cur = nxt
        return None

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                e = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = self.mtime
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if e[0] == "dir":
                    info.type, info.mode = tarfile.DIRTYPE, e[1]
                    t.addfile(info)
                elif e[0] == "link":
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, e[1], 0o777
                    t.addfile(info)
                else:
                    info.mode, info.size = e[1], len(e[2])
                    t.addfile(info, io.BytesIO(e[2]))
        return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=6, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def owning_packages(paths):
    """Debian packages that own `paths`, asked of dpkg in one call under every
    name a file may be registered with (merged /usr)."""
    names = set()
    for p in paths:
        real = os.path.realpath(p)
        names.update({p, real, real.removeprefix("/usr")})
    r = subprocess.run(["dpkg", "-S", *sorted(names)], capture_output=True, text=True)
    pkgs = set()
    for line in r.stdout.splitlines():
        if ": " in line:
            for pkg in line.split(": ", 1)[0].split(","):
                pkgs.add(pkg.strip().split(":")[0])
    return pkgs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", action="append", required=True, help="[NAME=]PATH")
    ap.add_argument("--name", default="fabric-nat:dev")
    ap.add_argument("--entrypoint", default="/usr/local/bin/fabric-agent")
    ap.add_argument("--version", default="", help="org.opencontainers.image.version")
    args = ap.parse_args()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = "%04d-%02d-%02dT%02d:%02d:%02dZ" % tuple(time.gmtime(mtime)[:6])

    bins = []
    for spec in args.bin:
        name, _, path = spec.rpartition("=")
        name = name or os.path.basename(path)
        if not os.path.isfile(path):
            sys.exit(f"oci_image: no binary {path}")
        bins.append((name, path))

    runtime = Layer(mtime)
    libs = sorted({lib for _, path in bins for lib in ldd(path)})
    for lib in libs:
        runtime.add_host_path(lib)
    if shutil.which("dpkg", path="/usr/bin:/bin"):
        for pkg in sorted(owning_packages(libs)):
            doc = f"/usr/share/doc/{pkg}/copyright"
            if os.path.isfile(doc):
                runtime.add_host_path(doc)
    for path, text in ETC_FILES.items():
        runtime.add_file(path, text.encode(), 0o644)
    for mode, path in DIRS:
        runtime.add_dir(path, mode)

    binaries = Layer(mtime)
    for name, path in bins:
        with open(path, "rb") as f:
            binaries.add_file(f"usr/local/bin/{name}", f.read(), 0o755)

    blobs = {}

    def blob(data):
        d = sha256(data)
        blobs[d] = data
        return d, len(data)

    layers, diff_ids, history = [], [], []
    for layer, what in ((runtime, f"runtime: {len(libs)} shared objects from ldd (loader included), /etc"),
                        (binaries, "binaries: " + " ".join(n for n, _ in bins))):
        raw = layer.tar()
        gz = gzip_bytes(raw)
        d, size = blob(gz)
        layers.append({"mediaType": OCI_LAYER, "digest": d, "size": size})
        diff_ids.append(sha256(raw))
        history.append({"created": created, "created_by": "deploy/image/oci_image.py " + what})

    labels = {"org.opencontainers.image.title": "fabric-nat",
              "org.opencontainers.image.description":
                  "Fabric NAT: fabric-agent, fabricctl and the fabric-nat CNI plugin"}
    if args.version:
        labels["org.opencontainers.image.version"] = args.version
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [args.entrypoint],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    cfg_digest, cfg_size = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": created},
    }
    man_digest, man_size = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    name = args.name
    full = name if "/" in name.split(":")[0] else "docker.io/library/" + name
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": man_digest, "size": man_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": name,
                            "io.containerd.image.name": full},
        }],
    }

    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode()}
    for d, data in blobs.items():
        files["blobs/sha256/" + d.split(":", 1)[1]] = data
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path in ["blobs", "blobs/sha256"] + sorted(files):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "root", "root"
            if path in files:
                info.mode, info.size = 0o644, len(files[path])
                t.addfile(info, io.BytesIO(files[path]))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
    os.replace(tmp, args.out)
    print(f"oci_image: {args.out}: {name}, {len(libs)} shared objects, "
          f"layers {' + '.join(str(l['size']) for l in layers)} bytes (gzip), "
          f"manifest {man_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
