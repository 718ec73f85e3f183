from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from evalsite.analysis.run_views import run_detail
from evalsite.api.media import media_file
from evalsite.core.views import FaviconView, healthz
from evalsite.runs import urls as runs_urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", FaviconView.as_view(), name="favicon"),
    # Stored audio goes through an access check (evalsite.api.media), in the demo and in production alike.
    path(settings.MEDIA_URL.strip("/") + "/<path:path>", media_file, name="media"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include("evalsite.api.urls")),
    path("analysis/", include("evalsite.analysis.urls")),
    path("l/", include("evalsite.listening.urls")),
    path("listening/", include("evalsite.listening.researcher_urls")),
    # The runs namespace: the runs app's own pages, and a run's page, which reads analysis (above runs).
    path(
        "",
        include(
            (
                [*runs_urls.urlpatterns, path("runs/<int:pk>/", run_detail, name="run-detail")],
                runs_urls.app_name,
            )
        ),
    ),
]
