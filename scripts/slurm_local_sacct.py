#!/usr/bin/env python3
"""``sacct`` for the one-node test cluster of scripts/slurm_local.sh, which has no slurmdbd.

    sacct -o JobID,State,NodeList --parsable2 -j 12 -j 13      # the query submitit polls with

Without accounting storage the real ``sacct`` only says "Slurm accounting storage is disabled", and
``sacct --completion`` (reading the controller's job-completion log) stops at the array fields
("Unknown type ArrayJobId") in SLURM 22.05. submitit needs the state of every array task to notice a
job that ended without writing its result (cancelled, killed, failed), so this answers that one query
from what the controller keeps without a database: its job table (``scontrol show job``: queued,
running and ended jobs, the ended ones for ``MinJobAge`` seconds, set to an hour by slurm_local.sh),
after the job-completion log (``JobCompType=jobcomp/filetxt``, one line per job end, in
``$SLURM_LOCAL_DIR/log/jobcomp.txt``) for jobs the table has dropped; the table, read last, wins.
Array tasks are named ``<array>_<task>`` and pending ranges ``<array>_[<range>]``, as sacct names
them. Any other use is passed to the real ``/usr/bin/sacct``.

Known gap: an array task cancelled while still pending leaves no trace in either source (the
controller shrinks the pending range), so submitit would wait for it; sacct on a cluster with
slurmdbd reports it CANCELLED.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REAL_SACCT = "/usr/bin/sacct"
FIELDS = ("JobID", "State", "NodeList")
KEYS = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|NodeList)=(\S*)")


def job_row(line: str) -> tuple[str, dict[str, str]]:
    """(main job id, sacct row) of one ``key=value`` job line of scontrol or the completion log."""
    fields: dict[str, str] = {}
    for key, value in KEYS.findall(line):
        fields.setdefault(key, value)
    array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
    if array and task:
        task = task.split("%")[0]  # the throttle of a pending range: sacct leaves it out
        job = f"{array}_{task}" if task.isdigit() else f"{array}_[{task}]"
    else:
        job = fields.get("JobId", "")
    nodes = fields.get("NodeList", "")
    row = {"JobID": job, "State": fields.get("JobState", ""), "NodeList": "" if nodes == "(null)" else nodes}
    return array or fields.get("JobId", ""), row


def rows_for(lines: list[str], wanted: set[str]) -> list[dict[str, str]]:
    rows = []
    for line in lines:
        main, row = job_row(line)
        if main in wanted:
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-o", "--format")
    parser.add_argument("--parsable2", action="store_true")
    parser.add_argument("-j", "--jobs", action="append", default=[])
    args, rest = parser.parse_known_args()
    fields = (args.format or "").split(",")
    if rest or not args.parsable2 or not args.jobs or any(f not in FIELDS for f in fields):
        os.execv(REAL_SACCT, [REAL_SACCT, *sys.argv[1:]])
    wanted = {j for group in args.jobs for j in group.split(",") if j}
    log = Path(os.environ.get("SLURM_LOCAL_DIR", "/nonexistent")) / "log" / "jobcomp.txt"
    ended = log.read_text().splitlines() if log.is_file() else []
    table = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True)
    rows = rows_for(ended, wanted) + rows_for(table.stdout.splitlines(), wanted)
    print("|".join(fields))
    for row in rows:
        print("|".join(row.get(f, "") for f in fields))


if __name__ == "__main__":
    main()
