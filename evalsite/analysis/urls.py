from django.urls import include, path

app_name = "analysis"

urlpatterns = [
    path("", include("evalsite.analysis.run_urls")),
    path("tests/", include("evalsite.analysis.listening_test_urls")),
]
