"""A local stand-in for the Hugging Face Hub: a replica builder and a Hub-compatible server.

Tests, benchmarks, the demo and air-gapped sites use these so that the real client code
(``HfFileSystem``, ``hf_hub_download``) is what runs.
"""
