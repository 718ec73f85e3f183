from django.urls import include, path

from evalsite.analysis import views

app_name = "analysis"

urlpatterns = [
    path("plotly.js", views.plotly_js, name="plotly-js"),
    path("", include("evalsite.analysis.run_urls")),
    path("tests/", include("evalsite.analysis.listening_test_urls")),
]
