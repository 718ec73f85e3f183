from django.contrib import admin

from evalsite.alerts.models import Alert, AlertRule, WebhookDelivery
from evalsite.core.admin import HTTPS_URL_FIELDS


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["run", "kind", "severity", "enabled"]
    list_filter = ["kind", "severity", "enabled"]
    search_fields = ["run__name"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["run", "cursor", "severity", "kind", "title", "created_at"]
    list_filter = ["severity", "kind"]
    search_fields = ["run__name", "title"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URL_FIELDS
    list_display = ["alert", "url", "status", "attempts", "last_status_code", "delivered_at"]
    list_filter = ["status"]
