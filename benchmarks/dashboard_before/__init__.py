"""The dashboards as served before issue 17 item 8, for benchmarks/dashboard_time.py to measure side by side:
the full plotly.js from the python plotly package through a Django view (cached a day), and static files
from Django's own static view (what ``runserver`` with DEBUG on did for the demo), no WhiteNoise, no hashed
names. Loaded with ``PYTHONPATH=benchmarks DJANGO_SETTINGS_MODULE=dashboard_before.settings``."""
