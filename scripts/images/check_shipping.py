#!/usr/bin/env python3
"""Checks what crik ships, without a Docker engine (none runs on this machine):

1. lints the Dockerfiles with hadolint;
2. validates every Kubernetes manifest in examples/ against the Kubernetes schemas
   (kubernetes-validate, strict: unknown fields are errors);
3. runs Dockerfile.example's own steps outside Docker: its `crik` stage is the crik image
   (Dockerfile.crik: the bundle, built now by scripts/bundle/build_bundle.py from a release
   build, as its header says), the runtime stage a debootstrapped Debian bookworm root (what
   debian:bookworm-slim is), each RUN with the stage's SHELL, each COPY as written;
4. runs the resulting image root as a container (crik as PID 1 of fresh namespaces, chrooted
   into it) with its ENTRYPOINT: starts the counter, checkpoints it on SIGTERM with the bundle's
   CRIU (the image has no other), restores it, and checks that the count carried on.

Usage (as root): scripts/images/check_shipping.py   (scripts/setup.sh installs the tools)
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

from debian_root import copy_apt_settings, debian_mirror, in_root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = "/opt/crik-tools/bin"
WORK = os.path.join(REPO, "target", "shipping")


def log(msg):
    print(f"check-shipping: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + (cmd if isinstance(cmd, str) else " ".join(shlex.quote(c) for c in cmd)))
    subprocess.run(cmd, check=True, **kw)


def parse_dockerfile(path):
    """Stages as [{'from': image, 'name': alias, 'steps': [(INSTRUCTION, args)]}]."""
    text = open(path).read()
    lines, cur = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not cur and (not stripped or stripped.startswith("#")):
            continue
        if cur and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        lines.append(cur + raw)
        cur = ""
    stages = []
    for line in lines:
        instr, _, args = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            stages.append({"from": m.group(1), "name": m.group(2), "steps": []})
        else:
            stages[-1]["steps"].append((instr, args.strip()))
    return stages


def lint_and_validate():
    for df in ["Dockerfile.example", "Dockerfile.node-state-server", "Dockerfile.crik"]:
        run([f"{TOOLS}/hadolint", os.path.join(REPO, df)])
    manifests = sorted(
        os.path.join(REPO, "examples", f) for f in os.listdir(os.path.join(REPO, "examples")) if f.endswith(".yaml")
    )
    run([f"{TOOLS}/kubernetes-validate", "--strict", "--quiet", *manifests])


def crik_stage(stage, context):
    """The crik image's root: Dockerfile.crik's build context (its header's two commands), which
    it copies whole into a scratch image (`COPY opt/crik /opt/crik`)."""
    assert re.match(r"crik:\S+$", stage["from"]) and not stage["steps"], stage
    crik_steps = parse_dockerfile(os.path.join(REPO, "Dockerfile.crik"))
    assert crik_steps == [{"from": "scratch", "name": None, "steps": [("COPY", "opt/crik /opt/crik")]}], crik_steps
    shutil.rmtree(context, ignore_errors=True)
    run(["cargo", "build", "--release", "--locked", "-p", "crik"], cwd=REPO)
    run([sys.executable, os.path.join(REPO, "scripts", "bundle", "build_bundle.py"), os.path.join(context, "opt/crik")])


def runtime_stage(stage, crik_root, root):
    assert stage["from"] == "debian:bookworm-slim", stage["from"]
    key = hashlib.sha256(json.dumps(stage["steps"]).encode()).hexdigest()[:16]
    marker = os.path.join(root, ".crik-stage")
    if os.path.exists(marker) and open(marker).read() == key:
        log(f"reusing {root} (same runtime steps)")
    else:
        shutil.rmtree(root, ignore_errors=True)
        run(["debootstrap", "--variant=minbase", "bookworm", root, debian_mirror()],
            stdout=subprocess.DEVNULL)
        copy_apt_settings(root)
        shell = ["/bin/sh", "-c"]
        for instr, args in stage["steps"]:
            if instr == "SHELL":
                shell = json.loads(args)
            elif instr == "RUN":
                run(in_root(root, [*shell, args]))
        open(marker, "w").write(key)
    entrypoint = None
    for instr, args in stage["steps"]:
        if instr == "COPY":
            parts = args.split()
            src_base = REPO
            if parts[0].startswith("--from="):
                assert parts[0] == "--from=crik", parts[0]
                parts = parts[1:]
                src_base = crik_root
            src, dst = os.path.join(src_base, parts[0].lstrip("/")), root + parts[1]
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)
        elif instr == "ENTRYPOINT":
            entrypoint = json.loads(args)
    return entrypoint


def container(root, entrypoint):
    """crik as PID 1 of fresh namespaces with the image root as its root mount (pivot_root, as
    container runtimes do; CRIU cannot dump a plain chroot's mount tree), host network kept."""
    setup = (
        f"mount --bind {root} {root} && mount --rbind /dev {root}/dev && mkdir -p {root}/.old && "
        f"cd {root} && pivot_root . .old && mount -t proc proc /proc && umount -l /.old && "
        "exec \"$@\""
    )
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--ipc", "--uts",
         "sh", "-c", setup, "sh", *entrypoint],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )


def crik_pid(outer):
    for _ in range(200):
        try:
            kids = open(f"/proc/{outer.pid}/task/{outer.pid}/children").read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("crik did not start")


def checkpoint_after(outer, seconds):
    time.sleep(seconds)
    os.kill(crik_pid(outer), signal.SIGTERM)
    out, err = outer.communicate(timeout=120)
    return outer.returncode, out.split(), err


def smoke_test(root, entrypoint):
    os.makedirs(f"{root}/etc/crik", exist_ok=True)
    with open(f"{root}/etc/crik/config.yaml", "w") as f:
        f.write("imageDir: /var/lib/crik/images\n")
    shutil.rmtree(f"{root}/var/lib/crik", ignore_errors=True)
    nft_before = set(subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.split("\n"))
    try:
        rc, out, err = checkpoint_after(container(root, entrypoint), 3.5)
        sys.stderr.write(err)
        counts = [int(x) for x in out if x.isdigit()]
        if rc != 0 or not counts:
            raise SystemExit(f"first container: exit {rc}, output {out}")
        if "(/opt/crik/bin/criu)" not in err:
            raise SystemExit("crik did not run the bundle's CRIU (its log names another)")
        rc, out2, err = checkpoint_after(container(root, entrypoint), 2.5)
        sys.stderr.write(err)
        counts2 = [int(x) for x in out2 if x.isdigit()]
        if rc != 0 or not counts2 or counts2[0] != counts[-1] + 1:
            raise SystemExit(f"restore did not carry the count on: {counts} then {counts2} (exit {rc})")
        log(f"image works: count {counts[-1]} checkpointed, restored as {counts2[0]}")
    finally:
        # CRIU keeps a network-lock table until a checkpoint is restored; the last one never is.
        for line in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.split("\n"):
            if line not in nft_before and "CRIU-" in line:
                subprocess.run(["nft", "delete", "table", *line.split()[1:]], check=False)


def main():
    if os.geteuid() != 0:
        raise SystemExit("check-shipping: must run as root")
    lint_and_validate()
    stages = parse_dockerfile(os.path.join(REPO, "Dockerfile.example"))
    crik_root = os.path.join(WORK, "crik-image")
    crik_stage(next(s for s in stages if s["name"] == "crik"), crik_root)
    root = os.path.join(WORK, "rootfs")
    entrypoint = runtime_stage(stages[-1], crik_root, root)
    # The image's only CRIU is the bundle's (debian:bookworm-slim has none).
    if os.path.exists(f"{root}/usr/sbin/criu"):
        raise SystemExit("check-shipping: the runtime root has a CRIU of its own: the bundle's is not what runs")
    subprocess.run(["chroot", root, "/opt/crik/bin/criu", "--version"], check=True)
    smoke_test(root, entrypoint)
    log("Dockerfile.example builds and runs; Dockerfiles lint clean; manifests validate")


if __name__ == "__main__":
    main()
