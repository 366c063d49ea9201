"""``plugins/mlops_plugin.py``: the MLOps plugin from Airflow's plugins folder, registered exactly once.

* with the provider installed (this environment), Airflow pointed at ``plugins/`` lists the
  plugin once, from the entry point, and reports no plugin import error ("already registered");
* without the installed entry point, the file itself provides ``MlopsPlugin`` from this
  checkout's ``provider/`` sources.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PLUGINS = REPO / "plugins"


def test_an_installed_provider_is_listed_once_with_no_import_error(tmp_path, jobs):
    env = jobs.airflow_env(tmp_path / "home", AIRFLOW__CORE__PLUGINS_FOLDER=str(PLUGINS), COLUMNS="300")
    probe = (
        "import json; from airflow import plugins_manager as pm; plugins, errors = pm._get_plugins(); "
        "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["names"].count("mlops") == 1, seen
    assert seen["errors"] == {}, seen["errors"]


def test_without_the_entry_point_the_file_provides_the_plugin(tmp_path, jobs):
    probe = (
        "import importlib.metadata as m, runpy; m.entry_points = lambda group=None: []; "
        f"names = runpy.run_path({str(PLUGINS / 'mlops_plugin.py')!r}); "
        "plugin = names['MlopsPlugin']; print(plugin.name, plugin.__module__)"
    )
    env = jobs.airflow_env(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["mlops", "airflow_mlops.plugins.mlops_view"]
