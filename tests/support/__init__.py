"""Test support for the image service: a real registry, test images, rootfs snapshots.

- `registry`: `Registry`, Debian's docker-registry on 127.0.0.1 (plain or TLS + basic auth).
- `images`: test images built by umoci (and GNU tar) and pushed by skopeo.
- `tree`: `snapshot`/`diff` of directory trees and `umoci_rootfs` for reference rootfs.
"""
