"""Dataset-scale jobs: CAM metrics over many images, LAM surveys over images × models × windows.

Run them locally (the default, in this process) or on Ray Data (``engine="ray"``: a local Ray,
or a cluster's ``address``). Results are a Parquet table plus an HTML report; reruns resume.
``lamcam batch cam`` and ``lamcam batch lam`` are the command-line doors; see docs/batch.md.

Needs pyarrow for the tables (``pip install 'lamcam[ray]'`` brings it with Ray).

Example:
    >>> import tempfile, lamcam.zoo
    >>> from lamcam.batch import CAMJob, find_inputs, run_job
    >>> job = CAMJob(find_inputs([str(lamcam.zoo.samples()[0])]), "shapes_resnet", ["gradcam"])
    >>> s = run_job(job, tempfile.mkdtemp(), report=False)
    >>> s.processed, s.failed, s.rows[0]["method"], s.rows[0]["pointing_game"]
    (1, 0, 'gradcam', 1.0)
"""

from lamcam.batch.engines import BatchSummary, run_job
from lamcam.batch.inputs import InputEntry, InputError, find_inputs
from lamcam.batch.jobs import SCHEMAS, VOLATILE, CAMJob, LAMSurvey
from lamcam.batch.store import RunStore, read_table

__all__ = ["CAMJob", "LAMSurvey", "run_job", "BatchSummary", "find_inputs", "InputEntry",
           "InputError", "RunStore", "read_table", "SCHEMAS", "VOLATILE"]
