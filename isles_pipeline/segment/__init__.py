"""Segmenters: turn a case's DWI and ADC into a predicted lesion mask.

All segmenters share one small interface (:class:`~isles_pipeline.segment.base.Segmenter`) and
are built by name with :func:`~isles_pipeline.segment.registry.make_segmenter`.
"""
