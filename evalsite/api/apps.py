from django.apps import AppConfig
from django.core import checks


class ApiConfig(AppConfig):
    name = "evalsite.api"
    label = "api"

    def ready(self) -> None:
        from evalsite.api.throttling import check_rates

        checks.register(check_rates)
