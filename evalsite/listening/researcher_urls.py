from django.urls import path

from evalsite.listening import researcher_views as views

app_name = "listening-admin"

urlpatterns = [
    path("", views.test_list, name="list"),
    path("new/", views.test_build, name="build"),
    path("import/", views.test_import, name="import"),
    path("<int:pk>/", views.test_detail, name="detail"),
    path("<int:pk>/trials/<int:index>/", views.test_preview, name="preview"),
    path("<int:pk>/preview/", views.test_listener_preview, name="listener-preview"),
    path("<int:pk>/<str:action>/", views.test_transition, name="transition"),
]
