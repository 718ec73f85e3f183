"""URLs of a listening test's analysis, included under /analysis/tests/ by evalsite.analysis.urls."""

from django.urls import path

from evalsite.analysis import listening_test_views as views

urlpatterns = [
    path("<int:pk>/", views.test_results_page, name="test-results"),
    path("<int:pk>/report.html", views.test_report, name="test-report"),
    path("<int:pk>/export/<slug:table>.<slug:fmt>", views.test_export, name="test-export"),
]
