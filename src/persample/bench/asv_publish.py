"""asv's HTML of every machine's results (`persample bench --publish-only`), and what it needs to open.

`asv publish` projects every result onto the parameters of the last discovery, so the benchmarks
are first rediscovered with the union of all grids. That discovery goes through asv's API, not
`asv run --bench just-discover`: `asv run` needs this host in ~/.asv-machine.json ("No information
stored about machine ...") and then writes `results/<host name>/machine.json`, a stray machine.

asv 0.6's site does not open from disk: its index.html loads jQuery, flot, Bootstrap, stupidtable
and md5 from CDNs (asv's package does not ship them) and its script fetches JSON, which browsers
refuse from file:// URLs. It needs an HTTP server and network access; `SERVE` says how.

    python -m persample.bench.asv_publish discover [--config asv.conf.json]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from .grid import GRID_ENV

SERVE = "asv preview (http://127.0.0.1:8080), or python -m http.server -d {html_dir}"
EXTERNAL = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["'](https?://[^"']+)["']""", re.IGNORECASE)


def discover(config: str) -> None:
    """Discover the benchmarks in this environment and save asv's `benchmarks.json` (run in the
    repository; no machine is read or written)."""
    from asv import environment
    from asv.benchmarks import Benchmarks
    from asv.config import Config
    from asv.repo import get_repo

    conf = Config.load(config)
    environments = list(environment.get_environments(conf, ["existing:same"]))
    conf.dvcs = "none"  # an existing environment: nothing is checked out
    Benchmarks.discover(conf, get_repo(conf), environments, []).save()


def publish(repo: Path, config: str) -> int:
    """Rediscover with every grid's parameters, then `asv publish`; returns the exit status."""
    command = [sys.executable, "-m", __name__, "discover", "--config", config]
    environment = {**os.environ, GRID_ENV: "all"}
    discovered = subprocess.run(command, cwd=repo, env=environment).returncode
    if discovered:
        return discovered
    published = subprocess.run([sys.executable, "-m", "asv", "publish", "--config", config], cwd=repo).returncode
    if not published:
        print(how_to_open(Path(repo) / _asv_config(repo, config).html_dir), flush=True)
    return published


def external_assets(page: Path) -> list[str]:
    """The URLs of the scripts and stylesheets `page` loads from the network."""
    return EXTERNAL.findall(Path(page).read_text(encoding="utf-8")) if Path(page).is_file() else []


def how_to_open(html_dir: Path) -> str:
    """A sentence on how to open asv's site in `html_dir` and why it does not open from disk."""
    hosts = sorted({re.sub(r"^https?://([^/]+)/.*$", r"\1", url) for url in external_assets(html_dir / "index.html")})
    network = f"; it loads its scripts from {', '.join(hosts)}, so it needs network access" if hosts else ""
    return (f"asv's site in {html_dir} must be served over HTTP ({SERVE.format(html_dir=html_dir)}): "
            f"its script fetches JSON, which browsers refuse from file:// URLs{network}.")


def _asv_config(repo: Path, config: str):
    from asv.config import Config

    return Config.load(str(Path(repo) / config))


def main(argv: list[str] | None = None) -> int:
    """`python -m persample.bench.asv_publish discover [--config asv.conf.json]`: saves benchmarks.json of this
    environment's suites; returns the exit status 0.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    found = commands.add_parser("discover", help="save benchmarks.json of this environment's suites")
    found.add_argument("--config", default="asv.conf.json")
    args = parser.parse_args(argv)
    discover(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
