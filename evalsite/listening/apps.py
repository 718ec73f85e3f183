from django.apps import AppConfig


class ListeningConfig(AppConfig):
    name = "evalsite.listening"
    label = "listening"
