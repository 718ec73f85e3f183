from django.apps import AppConfig


class DemoConfig(AppConfig):
    """``manage.py demo``: the embedded default with demo data. It drives every app, so it sits above them all."""

    name = "evalsite.demo"
    label = "demo"
