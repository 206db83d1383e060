"""What the tests, the benchmarks and the scripts share, and users do not: ``dagster dev`` with a
local Hub for end-to-end runs (``dagster_dev``), scratch PostgreSQL databases (``postgres``),
the command run as a user runs it and the processes it leaves (``processes``), tiny nnU-Net model
folders made by nnunetv2's own tools (``nnunet_models``) and the plain reference scoring
(``reference_metrics``). Not in the wheel: it runs from a checkout only.
"""
