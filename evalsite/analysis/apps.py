from django.apps import AppConfig


class AnalysisConfig(AppConfig):
    name = "evalsite.analysis"
    label = "analysis"
