from django.contrib import admin

from evalsite.api.models import ResearcherToken


@admin.register(ResearcherToken)
class ResearcherTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "name", "prefix", "created_at", "last_used_at"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = ["token_hash", "prefix", "last_used_at"]
