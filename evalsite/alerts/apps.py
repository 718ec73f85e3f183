from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "evalsite.alerts"
    label = "alerts"
