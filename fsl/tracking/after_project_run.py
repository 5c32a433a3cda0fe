"""Put back the status an interrupted run ended with, once `mlflow run` has exited.

MLflow 3.17's `mlflow run` marks its run FAILED (or FINISHED) when the entry point's process exits,
also when that process already ended the run itself: `_maybe_set_run_terminated` compares the
status string the store returns with integer codes, so it always overwrites. Ctrl-C under
`mlflow run` would so end every run FAILED, where fsl ends it KILLED. When fsl is interrupted
inside `mlflow run`, it starts this watcher in a session of its own:

    python -m fsl.tracking.after_project_run RUN_ID PARENT_PID STATUS

It waits until the `mlflow run` process (PARENT_PID) is gone (at most TIMEOUT seconds), then sets
the run to STATUS if the store says FAILED. It changes nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

TIMEOUT = 120.0


def start(run_id: str, status: str) -> None:
    """Start the watcher for this process's parent (`mlflow run`); it outlives this process."""
    subprocess.Popen([sys.executable, "-m", __name__, run_id, str(os.getppid()), status], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(run_id: str, parent: int, status: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _alive(parent) and time.monotonic() < deadline:
        time.sleep(0.2)
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if client.get_run(run_id).info.status == "FAILED":
        client.set_terminated(run_id, status)
        client.set_tag(run_id, "fsl.status_restored", f"{status} (mlflow run had marked it FAILED on exit)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
