#!/usr/bin/env python3
"""Helm for the Chokepoint chart, through helm-sdkpy (Helm's own Go code as a library, from
PyPI: no helm binary is reachable here). Usage:

    helm.py KUBECONFIG install|upgrade RELEASE CHART [VALUES.json]
    helm.py KUBECONFIG uninstall|status RELEASE
    helm.py - lint CHART


Prints the release as JSON (install/upgrade/status; its "manifest" is what Helm rendered and
applied) or the uninstall result. Exits 1 with Helm's message on failure.
"""

import asyncio
import json
import sys

import helm_sdkpy as helm


def main() -> int:
    kubeconfig, action, release = sys.argv[1:4]
    if action == "lint":
        # Offline: `helm lint` of the chart directory (no cluster needed).
        try:
            out = asyncio.run(helm.Lint(helm.Configuration(namespace="default")).run(release))
        except helm.HelmError as e:
            print(f"helm lint: {e}", file=sys.stderr)
            return 1
        print(json.dumps(out))
        bad = out.get("Errors") or [m for m in out.get("Messages") or [] if m.get("Severity", 0) >= 2]
        return 1 if bad else 0
    cfg = helm.Configuration(namespace="default", kubeconfig=kubeconfig)
    try:
        if action in ("install", "upgrade"):
            chart = sys.argv[4]
            values = json.load(open(sys.argv[5])) if len(sys.argv) > 5 else None
            cls = helm.Install if action == "install" else helm.Upgrade
            # No controllers run in the tests' control plane: do not wait for pods.
            out = asyncio.run(cls(cfg).run(release, chart, values=values, wait=False, timeout=120))
        elif action == "uninstall":
            out = asyncio.run(helm.Uninstall(cfg).run(release, wait=False, timeout=120))
        elif action == "status":
            out = asyncio.run(helm.Status(cfg).run(release))
        else:
            print(f"unknown action {action}", file=sys.stderr)
            return 2
    except helm.HelmError as e:
        print(f"helm {action}: {e}", file=sys.stderr)
        return 1
    rel = out.get("release", out) if isinstance(out, dict) else out
    if isinstance(rel, dict):
        # The chart itself (every file, base64) is left out.
        rel = {k: rel.get(k) for k in ("name", "version", "namespace", "info", "manifest")}
    print(json.dumps(rel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
