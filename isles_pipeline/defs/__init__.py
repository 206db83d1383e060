"""The Dagster layer: resources, partitioned assets, checks, sensors and schedules that wire
the plain-Python science modules of ``isles_pipeline`` into a pipeline."""
