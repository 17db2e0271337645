"""Making Debian roots on this machine, for scripts/images/check_shipping.py and scripts/images/test_images.py:
the machine's own Debian mirror and apt network settings, and running commands chrooted in a
root with /proc, /dev and DNS."""
import os
import shutil


def debian_mirror():
    for f in sorted(os.listdir("/etc/apt/sources.list.d")):
        if f.endswith(".sources"):
            for line in open(os.path.join("/etc/apt/sources.list.d", f)):
                if line.startswith("URIs:") and "security" not in line and line.split()[1].rstrip("/").endswith("debian"):
                    return line.split()[1]
    return "http://deb.debian.org/debian"


def copy_apt_settings(root):
    """The mirror's network settings (a docker build would get them as build-time configuration):
    e.g. a frozen snapshot needs Check-Valid-Until false."""
    for f in os.listdir("/etc/apt/apt.conf.d"):
        if "Acquire::" in open(os.path.join("/etc/apt/apt.conf.d", f)).read():
            shutil.copy2(os.path.join("/etc/apt/apt.conf.d", f), f"{root}/etc/apt/apt.conf.d/{f}")


def in_root(root, argv):
    """A command running argv chrooted into root, with /proc, /dev and DNS, in a private mount
    namespace."""
    setup = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        f"cp /etc/resolv.conf {root}/etc/resolv.conf && exec chroot {root} \"$@\""
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", *argv]
