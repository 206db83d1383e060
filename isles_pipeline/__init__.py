"""isles_pipeline: ISLES'24 stroke-lesion segmentation research as a Dagster pipeline.

Data flow: catalogue -> source (shards over HfFileSystem) -> store (case files) -> segment
-> metrics -> report; the Dagster layer (``isles_pipeline.defs``) wires it, with its automation
and sensors; ``settings.py`` reads every setting. Everything outside ``defs`` is plain Python, usable without Dagster.
"""

__version__ = "0.1.0"
