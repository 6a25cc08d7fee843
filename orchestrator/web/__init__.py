"""`saga web`: the HTTP API and the live web view (FastAPI, served by uvicorn; the `web` extra)."""
