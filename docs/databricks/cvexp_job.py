"""A Databricks job task that runs one cvexp job in the driver's Python: ``cvexp_job.py <job> [overrides...]``.

In-process (``cvexp.run``), not ``python -m cvexp.<job>`` in a subprocess, so that ``ray=spark``
(``trainer=ray_on_spark``, ``engine=ray ray=spark``) finds the job cluster's active SparkSession and
starts Ray on its executors. The job's summary is printed into the task's output.
"""

import sys

import cvexp

if __name__ == "__main__":
    job, *overrides = sys.argv[1:]
    print(cvexp.run(job, overrides))
