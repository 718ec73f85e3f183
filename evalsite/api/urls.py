from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from evalsite.api import alerts, listening, runs
from evalsite.api.docs import ApiDocsView
from evalsite.api.exceptions import endpoint_not_found

app_name = "api"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The schema made readable (Swagger UI); public like the schema it shows.
    # The schema made readable (Swagger UI); public like the schema it shows.
    path("docs/", ApiDocsView.as_view(url_name="api:schema"), name="docs"),
    path("eval-sets/", runs.EvalSetListApi.as_view(), name="eval-sets"),
    path("runs/", runs.RunListApi.as_view(), name="runs"),
    path("runs/<int:run_id>/", runs.RunDetailApi.as_view(), name="run"),
    path("runs/<int:run_id>/checkpoints/", runs.CheckpointListApi.as_view(), name="checkpoints"),
    path("runs/<int:run_id>/checkpoints/<int:step>/", runs.CheckpointDetailApi.as_view(), name="checkpoint"),
    path(
        "runs/<int:run_id>/checkpoints/<int:step>/evaluate/",
        runs.CheckpointEvaluateApi.as_view(),
        name="checkpoint-evaluate",
    ),
    path("runs/<int:run_id>/alerts/", alerts.AlertListApi.as_view(), name="alerts"),
    path("runs/<int:run_id>/alert-rules/", alerts.AlertRulesApi.as_view(), name="alert-rules"),
    path("listening-tests/", listening.ListeningTestCreateApi.as_view(), name="listening-tests"),
    path("listening-tests/import/", listening.ListeningTestImportApi.as_view(), name="listening-test-import"),
    path("listening-tests/<int:test_id>/", listening.ListeningTestDetailApi.as_view(), name="listening-test"),
    path(
        "listening-tests/<int:test_id>/publish/",
        listening.ListeningTestPublishApi.as_view(),
        name="listening-test-publish",
    ),
    path(
        "listening-tests/<int:test_id>/close/",
        listening.ListeningTestCloseApi.as_view(),
        name="listening-test-close",
    ),
    path(
        "listening-tests/<int:test_id>/results/",
        listening.ListeningTestResultsApi.as_view(),
        name="listening-test-results",
    ),
    # Last: any other URL ending in "/" gets the JSON error body. Without the slash CommonMiddleware
    # still redirects to the slashed URL first (APPEND_SLASH), as before.
    re_path(r"^(?P<path>(?:.*/)?)$", endpoint_not_found, name="not-found"),
]
