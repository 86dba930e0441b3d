"""Runs one per-slide shell job (tissue_mask, tiles, filter_tiles, pixels): see mask_first/jobs.py."""
import sys
from pathlib import Path

# like Snakemake's script preamble: the checkout comes after an installed mask_first
sys.path.append(str(Path(__file__).resolve().parents[2]))

from mask_first.jobs import main  # noqa: E402

sys.exit(main())
