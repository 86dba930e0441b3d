"""Runs one per-slide shell job (tissue_mask, tiles, filter_tiles, pixels): see mask_first/jobs.py.

In a local run with warm start on, the job goes to the run's warm process
(mask_first/forkserver.py) and this process only waits for its exit status.
"""
import os
import sys
from pathlib import Path

# like Snakemake's script preamble: the checkout comes after an installed mask_first
sys.path.append(str(Path(__file__).resolve().parents[2]))

if sys.argv[1:2] == ["--serve"]:
    from mask_first.forkserver import main

    sys.exit(main(sys.argv[2:]))

# forkserver.ENV, spelt out: importing the module to read it costs a cold job 8-11 ms
if os.environ.get("MASK_FIRST_FORKSERVER"):
    from mask_first import forkserver

    code = forkserver.run(os.environ["MASK_FIRST_FORKSERVER"], sys.argv[1:])
    if code is not None:
        forkserver.exit_with(code)

from mask_first.jobs import main  # noqa: E402

sys.exit(main())
