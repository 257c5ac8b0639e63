#!/usr/bin/env python3
"""`helm template` for machines without the helm binary.

Renders a chart with Helm's own engine (Helm v4's Go SDK, through the PyPI package
helm-python-sdk: `pip install helm-python-sdk==0.2.2`) and prints the manifests as
`helm template` does: `---`, a `# Source:` line, the manifest. Also runs `helm lint`
(--strict) and the values schema check unless --no-lint.

    python3 charts/helm-template.py charts/ferrolb [-f values.yaml]... [--name N]
        [--namespace NS] [--include-crds] [--no-lint]

Exit codes: 0 rendered; 1 render/lint/values error (message on stderr); 3 helm-python-sdk
missing.
"""
import argparse
import sys

try:
    import helm_python as helm
except ImportError:
    sys.stderr.write(
        "helm-python-sdk is not installed: pip install helm-python-sdk==0.2.2\n"
    )
    sys.exit(3)


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chart")
    p.add_argument("-f", "--values", action="append", default=[])
    p.add_argument("--name", default="ferrolb")
    p.add_argument("--namespace", default="ferrolb-system")
    p.add_argument("--include-crds", action="store_true")
    p.add_argument("--no-lint", action="store_true")
    a = p.parse_args()

    values = {}
    for f in a.values:
        with open(f, encoding="utf-8") as fh:
            merge(values, helm.values_from_yaml(fh.read()) or {})

    try:
        if not a.no_lint:
            report = helm.lint(a.chart, values, strict=True, namespace=a.namespace)
            bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            errors = list(report.get("errors") or []) + [
                f"{m.get('path')}: {m.get('error')}" for m in bad
            ]
            if errors:
                for e in errors:
                    sys.stderr.write(f"lint: {e}\n")
                return 1
        with helm.Chart.load(a.chart) as chart:
            chart.validate_schema(values)
            out = []
            if a.include_crds:
                for crd in chart.crds:
                    out.append((crd.get("filename") or crd.get("name"), crd["data"]))
            rendered = chart.render(
                values, name=a.name, namespace=a.namespace, is_install=True
            )
            for path in sorted(rendered):
                body = rendered[path]
                if path.endswith("NOTES.txt") or not body.strip():
                    continue
                out.append((path, body))
    except helm.HelmError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1

    for path, body in out:
        # A template may hold several documents; keep them, under one Source line.
        body = body.strip("\n")
        if body.startswith("---"):
            body = body[3:].lstrip("\n")
        sys.stdout.write(f"---\n# Source: {path}\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
