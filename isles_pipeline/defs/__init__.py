"""The Dagster layer: resources, partitioned assets, checks, automation and sensors that wire
the plain-Python science modules of ``isles_pipeline`` into a pipeline."""

import warnings

import dagster as dg

# Two features this layer relies on are marked beta/preview in dagster 1.13: backfill policies
# (they batch cases per run) and partitioned asset checks (one check result per case range).
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
