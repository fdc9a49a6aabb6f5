#!/usr/bin/python3
"""Builds a minimal OCI image layout archive (Debian's python3, stdlib only).

No registry is reachable from the test machines, so the containerd
end-to-end test makes its images itself and imports them with
`ctr images import`:

  oci_image.py OUT.tar --name REF [--name REF...] [--busybox PATH]
               [--applet NAME...] [--file SRC:DEST...] [--cmd ARG...]

One uncompressed layer holds busybox (Debian's busybox-static: one static
binary) with a symlink per applet in /bin, the extra static files given with
--file, and the empty directories a runtime mounts over (/proc, /sys, /dev,
/etc, /tmp). The archive is an OCI image layout (oci-layout, index.json,
blobs/sha256/...); each --name becomes one index entry, annotated with
io.containerd.image.name so ctr stores it under exactly that reference.
Output is byte-for-byte reproducible: fixed owners and timestamps.
"""
import argparse
import hashlib
import io
import json
import platform
import sys
import tarfile

ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64"}


def tar_entry(tar, name, kind, data=b"", mode=0o755, target=""):
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif kind == "link":
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer(busybox, applets, files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root"):
            tar_entry(tar, d, "dir", mode=0o1777 if d == "tmp" else 0o755)
        with open(busybox, "rb") as f:
            tar_entry(tar, "bin/busybox", "file", f.read())
        for applet in applets:
            tar_entry(tar, "bin/" + applet, "link", target="busybox")
        tar_entry(tar, "etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        tar_entry(tar, "etc/group", "file", b"root:x:0:\n", 0o644)
        for src, dest in files:
            with open(src, "rb") as f:
                tar_entry(tar, dest.lstrip("/"), "file", f.read())
    return out.getvalue()


def blob(blobs, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--name", action="append", required=True)
    p.add_argument("--busybox", default="/bin/busybox")
    p.add_argument("--applet", action="append", default=[])
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--cmd", nargs="+", default=["/bin/sh"])
    a = p.parse_args(argv)
    arch = ARCHES.get(platform.machine(), platform.machine())
    files = [tuple(f.split(":", 1)) for f in a.file]

    blobs = {}
    layer_data = layer(a.busybox, a.applet, files)
    layer_desc = blob(blobs, layer_data, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": a.cmd, "WorkingDir": "/"},
        # Uncompressed layer: its diff id is its digest.
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = blob(blobs, json.dumps(config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = blob(blobs, json.dumps(manifest, sort_keys=True).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    index = {"schemaVersion": 2, "manifests": []}
    for name in a.name:
        entry = dict(manifest_desc)
        entry["platform"] = {"architecture": arch, "os": "linux"}
        entry["annotations"] = {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}
        index["manifests"].append(entry)

    with tarfile.open(a.out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar_entry(tar, "blobs", "dir")
        tar_entry(tar, "blobs/sha256", "dir")
        for digest, data in sorted(blobs.items()):
            tar_entry(tar, "blobs/sha256/" + digest.split(":", 1)[1], "file", data, 0o644)
        tar_entry(tar, "oci-layout", "file", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                  0o644)
        tar_entry(tar, "index.json", "file", json.dumps(index, sort_keys=True).encode(), 0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
