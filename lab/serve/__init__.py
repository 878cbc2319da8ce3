"""``lab serve``: an OpenAI-compatible HTTP API over one decode engine (see docs/serving.md).

:mod:`lab.serve.protocol` holds the request bodies, their checks and the chat
template; :mod:`lab.serve.app` the FastAPI application and the engine thread.
"""
