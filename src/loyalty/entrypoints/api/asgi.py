"""``uvicorn loyalty.entrypoints.api.asgi:app``: the app on the configured database."""

from loyalty.entrypoints.api.app import create_app
from loyalty.entrypoints.runtime import settle_heap

app = create_app()
settle_heap()
