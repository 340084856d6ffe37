"""``uvicorn loyalty.entrypoints.api.asgi:app``: the app on the configured database."""

from loyalty.entrypoints.api.app import create_app

app = create_app()
