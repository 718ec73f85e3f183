"""Run charts and checkpoint comparison; included by ``analysis.urls`` in the ``analysis`` namespace."""

from django.urls import path

from evalsite.analysis import run_views

urlpatterns = [
    path("runs/<int:pk>/", run_views.run_analysis, name="run-analysis"),
    path("compare/", run_views.checkpoint_compare, name="checkpoint-compare"),
]
