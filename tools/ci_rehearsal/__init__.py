"""The CI rehearsal: a GitHub workflow's jobs run on this machine, from the workflow file itself.

The CI example (.github/workflows/vm-tests.yml) is what users copy, so it must work on
its first push. This reads it and runs its jobs as GitHub would: in the order `needs:`
gives, every shard of a matrix at once, each job's `run:` steps in order with the
workflow's own `env` and its expressions (expressions.py), `if:` conditions, step and
job outputs through `$GITHUB_OUTPUT`. What only GitHub has is stood in for, and only that:

    a runner          a folder per job: ws/ (the workspace), c/ (its VMLAB_CACHE), tmp/, logs/;
                      the host's images built from packages are linked into c/ (a runner
                      would build them in its first minutes)
    actions/checkout  a git checkout of the repository's working tree (tracked and
                      untracked files, not what git ignores)
    actions/cache     a folder of entries by key, kept between rehearsals (WORK/actions-cache/)
    upload-artifact,  a folder per run (WORK/rN/artifacts/NAME/); a name uploaded twice
    download-artifact is an error, as on GitHub
    sudo              a stand-in (this host runs as root) that resets the environment as
                      sudo's env_reset does, keeping --preserve-env's names

The VM is switched through the workflow's own `VM` variable to one built offline. Each
shard of a matrix must upload vmlab's results (report.json, junit.xml); a run after the
first must build no golden image (the cache hit). Exit code: the worst of the shards,
0 passed, 1 failed, 2 did not finish (a job failed before its results, or was skipped);
130 on Ctrl-C, after the `if: always()` steps ran and no QEMU of the rehearsal is left.

One concept per module:

    expressions.py  GitHub's expression language, matrices, $GITHUB_OUTPUT, hashFiles
    records.py      what a run leaves: step and job records, the results check, the summary lines
    standins.py     the stand-ins for what only GitHub has (checkout, sudo, cache, artifacts)
    job.py          one runner: a job, or one shard of a matrix, step by step
    rehearsal.py    the whole workflow, run after run, and its command line (scripts/rehearse-ci)

It rehearses vmlab's own workflow, so it is a tool of this repository, not part of vmlab's
wheel: it lives in tools/, uses vmlab (never the other way round: .importlinter) and runs
with tools/ on the path, as scripts/rehearse-ci runs it: PYTHONPATH=tools python -m ci_rehearsal.rehearsal
"""
