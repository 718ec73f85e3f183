"""The dashboards' partial plotly.js: re-fetch it from the npm registry, verify it, and compare its size.

The dashboards draw only a few trace types (scatter, bar, box, heatmap: evalsite/analysis/figures_*.py), so
they load plotly's official ``plotly.js-cartesian-dist-min`` bundle, vendored under
``static/vendor/plotly/`` with its licence, instead of the full plotly.js that the python plotly package
carries. ``static/vendor/plotly/bundle.json`` records the package, version and sha256 of the file.

    python benchmarks/plotly_bundle.py            # verify the vendored file against bundle.json; sizes
    python benchmarks/plotly_bundle.py --fetch    # npm pack the recorded version again, compare byte for byte
    python benchmarks/plotly_bundle.py --fetch --version 4.2.0   # upgrade: vendor that version, update bundle.json

``--fetch`` needs ``npm`` (the registry only). Keep the version equal to the plotly.js the python plotly
package bundles (``plotly.offline.get_plotlyjs_version()``); tests/analysis/test_plotly_bundle.py checks it,
and that every trace type the figure builders produce is in the bundle.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "static" / "vendor" / "plotly"
RECORD = VENDOR / "bundle.json"
# How each trace module registers itself in plotly's bundles, minified or not (checked against
# Plotly.PlotSchema in Chromium by tests/integration/test_static_files_browser.py).
TRACE_MODULE = re.compile(rb'moduleType:\s*"trace",\s*name:\s*"([a-z0-9]+)"')
HEADER_VERSION = re.compile(rb"\* plotly\.js(?: \([^)]*\))? v(\d+\.\d+\.\d+)")


def record() -> dict:
    return json.loads(RECORD.read_text())


def trace_types(bundle: bytes) -> set[str]:
    """The trace types a plotly.js bundle registers."""
    return {m.decode() for m in TRACE_MODULE.findall(bundle)}


def header_version(bundle: bytes) -> str:
    """The plotly.js version in the bundle's licence header."""
    match = HEADER_VERSION.search(bundle[:400])
    if not match:
        raise ValueError("no 'plotly.js ... vX.Y.Z' licence header in the first 400 bytes")
    return match.group(1).decode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npm_pack(package: str, version: str, into: Path) -> Path:
    """The package's tarball from the registry, unpacked; returns its ``package/`` folder."""
    if not shutil.which("npm"):
        raise SystemExit("npm is not installed (apt-get install npm)")
    out = subprocess.run(
        ["npm", "pack", f"{package}@{version}", "--silent"],
        cwd=into,
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = into / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    return into / "package"


def fetch(version: str | None) -> None:
    rec = record()
    upgrade = version is not None and version != rec["version"]
    version = version or rec["version"]
    with tempfile.TemporaryDirectory() as tmp:
        package = npm_pack(rec["package"], version, Path(tmp))
        data = (package / rec["file"]).read_bytes()
        if header_version(data) != version:
            raise SystemExit(f"{rec['package']}@{version}: the file's header says v{header_version(data)}")
        if not upgrade:
            if sha256(data) != rec["sha256"]:
                raise SystemExit(
                    f"{rec['package']}@{version} from the registry has sha256 {sha256(data)}, "
                    f"bundle.json records {rec['sha256']}"
                )
            print(
                f"{rec['package']}@{version}: the registry's file matches the vendored one (sha256 {rec['sha256']})"
            )
            return
        (VENDOR / rec["file"]).write_bytes(data)
        shutil.copyfile(package / "LICENSE", VENDOR / "LICENSE")
        rec.update(version=version, sha256=sha256(data), trace_types=sorted(trace_types(data)))
        RECORD.write_text(json.dumps(rec, indent=2) + "\n")
        print(
            f"vendored {rec['package']}@{version} (sha256 {rec['sha256']}); review and commit static/vendor/plotly/"
        )


def verify() -> None:
    rec = record()
    data = (VENDOR / rec["file"]).read_bytes()
    problems = []
    if sha256(data) != rec["sha256"]:
        problems.append(f"sha256 {sha256(data)} != recorded {rec['sha256']}")
    if header_version(data) != rec["version"]:
        problems.append(f"header v{header_version(data)} != recorded {rec['version']}")
    if sorted(trace_types(data)) != rec["trace_types"]:
        problems.append(f"trace types {sorted(trace_types(data))} != recorded {rec['trace_types']}")
    if problems:
        raise SystemExit(f"{VENDOR / rec['file']}: " + "; ".join(problems))
    print(
        f"{rec['package']}@{rec['version']}: sha256 and trace types as recorded ({', '.join(rec['trace_types'])})"
    )


def sizes() -> None:
    """Bytes sent for the vendored bundle and for the full plotly.js (the python plotly package's)."""
    import brotli
    import plotly.offline

    full = plotly.offline.get_plotlyjs().encode()
    partial = (VENDOR / record()["file"]).read_bytes()
    print(f"{'bundle':<40} {'raw KiB':>8} {'gzip -9':>8} {'brotli':>8}")
    for name, data in (
        (f"full plotly.js v{plotly.offline.get_plotlyjs_version()}", full),
        (f"{record()['package']} v{header_version(partial)}", partial),
    ):
        gz, br = len(gzip.compress(data, 9)), len(brotli.compress(data))
        print(f"{name:<40} {len(data) / 1024:>8.0f} {gz / 1024:>8.0f} {br / 1024:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fetch", action="store_true", help="npm pack the bundle and compare (or vendor, with --version)"
    )
    parser.add_argument("--version", help="with --fetch: vendor this version instead of the recorded one")
    args = parser.parse_args()
    if args.fetch:
        fetch(args.version)
    verify()
    sizes()
    print("command: python benchmarks/plotly_bundle.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
