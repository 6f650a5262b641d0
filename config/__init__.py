"""Django project wiring for the Portico control plane."""

from config.celery import app as celery_app

__all__ = ["celery_app"]
