"""Serving: an OpenAI-compatible HTTP server on the engine (serve.app), its scheduler thread
(serve.scheduler) and the OpenAI request/response shapes (serve.protocol)."""
