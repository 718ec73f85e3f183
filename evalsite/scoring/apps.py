from django.apps import AppConfig


class ScoringConfig(AppConfig):
    name = "evalsite.scoring"
    label = "scoring"
