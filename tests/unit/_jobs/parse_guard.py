"""Parse one DAG file in this fresh interpreter and report which heavy libraries it loaded.

Usage: ``python parse_guard.py DAG_FILE DAGS_FOLDER RESULT.json``.

The DAG folder goes on ``sys.path`` first, as Airflow puts it there for DAG files
(``from include.x import y``). The file runs under a module name that is not ``__main__``
(so ``if __name__ == "__main__": dag.test()`` blocks stay inert, as when Airflow parses it).
Exits non-zero when the file does not parse.
"""

from __future__ import annotations

import json
import runpy
import sys
import time

HEAVY = (
    "mlflow",
    "feast",
    "great_expectations",
    "torch",
    "horovod",
    "seldon_core",
    "alibi_detect",
    "openlineage",  # only inside the operators' get_openlineage_facets_on_* methods
)


def main(dag_file: str, dags_folder: str, result_path: str) -> None:
    sys.path.insert(0, dags_folder)
    started = time.monotonic()
    namespace = runpy.run_path(dag_file, run_name="unusual_prefix_parse_guard")
    seconds = time.monotonic() - started
    loaded = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
    dag_ids = sorted(
        {v.dag_id for v in namespace.values() if type(v).__name__ == "DAG" and hasattr(v, "dag_id")}
    )
    with open(result_path, "w") as f:
        json.dump({"heavy": loaded, "dag_ids": dag_ids, "parse_seconds": seconds}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
