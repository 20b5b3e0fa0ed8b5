#!/usr/bin/env python3
"""Checks that no crate of the workspace states a `rust-version` older than
one its dependencies declare: a user on the stated version could not build.

For each publishable workspace crate, walks its normal and build
dependencies (all features on, as docs.rs and `--all-features` build it;
dev-dependencies are not part of what users build) in the resolved tree,
and fails listing every dependency whose `rust-version` is newer than the
crate's. Prints, per crate, the newest `rust-version` found below it.

Usage: .ci/rust-versions.py   (from the repository root; needs cargo)
"""

import json
import subprocess
import sys


def version_tuple(text):
    """`1.88` and `1.88.0` are the same version: padded to three parts."""
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    metadata = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"]
        )
    )
    packages = {package["id"]: package for package in metadata["packages"]}
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    members = metadata["workspace_members"]
    failures = []
    for member in members:
        crate = packages[member]
        if crate.get("publish") == []:
            continue
        stated = crate.get("rust_version")
        if not stated:
            failures.append(f"{crate['name']}: states no rust-version")
            continue
        newest = ("0", None)
        seen = set()
        stack = [member]
        while stack:
            current = stack.pop()
            for dep in nodes[current]["deps"]:
                kinds = {kind["kind"] for kind in dep["dep_kinds"]}
                if kinds == {"dev"}:
                    continue
                if dep["pkg"] in seen:
                    continue
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])
                needed = packages[dep["pkg"]].get("rust_version")
                if not needed:
                    continue
                name = packages[dep["pkg"]]["name"]
                if version_tuple(needed) > version_tuple(newest[0]):
                    newest = (needed, name)
                if version_tuple(needed) > version_tuple(stated):
                    failures.append(
                        f"{crate['name']} states rust-version {stated}, "
                        f"but {name} {packages[dep['pkg']]['version']} needs {needed}"
                    )
        print(
            f"{crate['name']}: rust-version {stated}; "
            f"newest below it: {newest[0]} ({newest[1]})"
        )
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
