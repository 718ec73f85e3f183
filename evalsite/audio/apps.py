from django.apps import AppConfig


class AudioConfig(AppConfig):
    name = "evalsite.audio"
    label = "audio"
