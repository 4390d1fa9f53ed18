"""asv's HTML on a machine that never ran asv: published without a machine entry (no "No information
stored about machine"), no stray `results/<host>/`, and the site says how it must be opened (asv's
package ships none of the scripts its page loads from CDNs, and its page fetches JSON)."""
import json
import shutil
import subprocess
from pathlib import Path

import asv

from persample.bench.asv_publish import external_assets, how_to_open, publish

SUITE = '''
class Tiny:
    params = [[1, 2]]
    param_names = ["n"]

    def time_nothing(self, n):
        pass
'''


def test_publishing_needs_no_machine_entry_and_leaves_no_machine_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.asv-machine.json: a fresh machine
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "__init__.py").write_text("")
    (tmp_path / "suites" / "tiny.py").write_text(SUITE)
    config = {"version": 1, "project": "tiny", "repo": ".", "branches": ["main"], "environment_type": "existing",
              "pythons": ["same"], "benchmark_dir": "suites", "results_dir": "results", "html_dir": "html"}
    (tmp_path / "asv.conf.json").write_text(json.dumps(config))
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "empty"], check=True)
    assert publish(tmp_path, "asv.conf.json") == 0
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["benchmarks.json"]
    assert "tiny.Tiny.time_nothing" in json.loads((tmp_path / "results" / "benchmarks.json").read_text())
    assert (tmp_path / "html" / "index.html").is_file()
    assert not (tmp_path / "home").exists()


def test_asv_ships_no_copy_of_the_scripts_its_site_loads_from_the_network():
    www = Path(asv.__file__).parent / "www"
    urls = external_assets(www / "index.html")
    assert any("jquery" in url for url in urls) and any("flot" in url for url in urls)
    shipped = {path.name for path in www.iterdir()}
    assert not {Path(url).name for url in urls} & shipped


def test_the_site_says_it_needs_a_server_and_the_network(tmp_path):
    shutil.copy(Path(asv.__file__).parent / "www" / "index.html", tmp_path / "index.html")
    advice = how_to_open(tmp_path)
    assert "python -m http.server" in advice and "file://" in advice
    assert "code.jquery.com" in advice and "needs network access" in advice
