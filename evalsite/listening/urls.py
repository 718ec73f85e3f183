from django.urls import path

from evalsite.listening import views

app_name = "listening"

urlpatterns = [
    path("i/<str:invite_token>/", views.invite, name="invite"),
    path("p/<str:ptoken>/", views.session, name="session"),
    path("p/<str:ptoken>/state", views.state, name="state"),
    path("p/<str:ptoken>/rate", views.rate, name="rate"),
    path("p/<str:ptoken>/flag", views.flag, name="flag"),
    path("p/<str:ptoken>/complete", views.complete, name="complete"),
    path("p/<str:ptoken>/telemetry", views.telemetry, name="telemetry"),
    path("p/<str:ptoken>/audio/<str:token>", views.audio, name="audio"),
    path("p/<str:ptoken>/ref/<str:token>", views.reference_audio, name="reference-audio"),
    path("p/<str:ptoken>/calibration", views.calibration, name="calibration"),
    path("p/<str:ptoken>/cal", views.calibration_audio, name="calibration-audio"),
    path("p/<str:ptoken>/headphone", views.headphone, name="headphone"),
    path("p/<str:ptoken>/hp/<str:token>", views.headphone_audio, name="headphone-audio"),
    path("p/<str:ptoken>/questionnaire/<str:stage>", views.questionnaire, name="questionnaire"),
]
