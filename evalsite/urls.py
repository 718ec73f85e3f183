from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from evalsite.core.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include("evalsite.api.urls")),
    path("analysis/", include("evalsite.analysis.urls")),
    path("l/", include("evalsite.listening.urls")),
    path("listening/", include("evalsite.listening.researcher_urls")),
    path("", include("evalsite.runs.urls")),
]
if settings.DEBUG:
    # Only the demo (DEBUG on) serves media itself; production serves it from the web server or S3.
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
