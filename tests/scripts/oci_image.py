#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (an OCI image layout in a tar) without a container engine.

    oci_image.py OUT.tar --name REF --entrypoint PATH [--user UID:GID] [--env K=V]...
                 [--distroless] FILE=DEST[:MODE]...

The archive is what `ctr images import` reads: `oci-layout`, `index.json` (its manifest annotated
with `io.containerd.image.name` = REF, so containerd names the image), `blobs/sha256/...` (config,
manifest, one uncompressed layer). Byte for byte the same for the same inputs: entries sorted,
mtime 0, owner 0:0 (65532 for the home directory), no timestamps in the config, so the digests are
stable and an unchanged image is not imported again. `--distroless` adds what
gcr.io/distroless/static-debian12:nonroot gives a static binary: /etc/passwd and /etc/group with
root, nobody and nonroot (65532), /home/nonroot, /tmp (1777) and the CA bundle at
/etc/ssl/certs/ca-certificates.crt (taken from Debian's ca-certificates on this machine).
Prints the manifest digest.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(entries):
    """entries: {path: (kind, data, mode, uid)} with kind "dir" or "file"; returns the tar bytes."""
    # Every parent directory exists in the layer.
    for path in list(entries):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            entries.setdefault(parent, ("dir", None, 0o755, 0))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            kind, data, mode, uid = entries[path]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = info.gid = uid
            info.uname = info.gname = ""
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--name", required=True)
    ap.add_argument("--entrypoint", required=True, action="append")
    ap.add_argument("--user", default="")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--distroless", action="store_true")
    ap.add_argument("files", nargs="+", help="SRC=DEST[:MODE]")
    args = ap.parse_args()

    entries = {}
    env = [PATH_ENV]
    if args.distroless:
        with open(CA_BUNDLE, "rb") as f:
            entries["etc/ssl/certs/ca-certificates.crt"] = ("file", f.read(), 0o644, 0)
        entries["etc/passwd"] = ("file", PASSWD.encode(), 0o644, 0)
        entries["etc/group"] = ("file", GROUP.encode(), 0o644, 0)
        entries["home/nonroot"] = ("dir", None, 0o700, 65532)
        entries["tmp"] = ("dir", None, 0o1777, 0)
        env.append("SSL_CERT_FILE=" + CA_BUNDLE)
    env.extend(args.env)
    for spec in args.files:
        src, dest = spec.split("=", 1)
        mode = 0o755
        if ":" in dest:
            dest, m = dest.rsplit(":", 1)
            mode = int(m, 8)
        with open(src, "rb") as f:
            entries[dest.lstrip("/")] = ("file", f.read(), mode, 0)

    layer_tar = layer(entries)
    layer_digest = sha256(layer_tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": args.entrypoint, "Env": env, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "tests/scripts/oci_image.py", "comment": args.name}],
    }
    if args.user:
        config["config"]["User"] = args.user
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer_tar),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = sha256(manifest_bytes)
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": index_bytes,
        "blobs/sha256/" + layer_digest[7:]: layer_tar,
        "blobs/sha256/" + sha256(config_bytes)[7:]: config_bytes,
        "blobs/sha256/" + manifest_digest[7:]: manifest_bytes,
    }
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[path]))
    os.replace(tmp, args.out)
    print(manifest_digest)


if __name__ == "__main__":
    sys.exit(main())
