"""Admin pieces shared by the apps' ModelAdmins."""

from django.db import models

# Webhook and redirect URLs typed without a scheme are https (Django 6's default; saying so now also
# silences the RemovedInDjango60Warning of every admin form with a URL field).
HTTPS_URL_FIELDS = {models.URLField: {"assume_scheme": "https"}}
