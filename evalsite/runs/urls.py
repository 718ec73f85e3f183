from django.urls import path

from evalsite.runs import views

app_name = "runs"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("evalsets/<int:pk>/", views.evalset_detail, name="evalset-detail"),
]
