"""The REST API (``/api/v1``) and the web UI, served by one FastAPI app (:mod:`kvmgr.api.app`)."""
