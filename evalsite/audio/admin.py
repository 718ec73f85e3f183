from django.contrib import admin
from django.utils.html import format_html

from evalsite.audio.models import AudioAsset


@admin.register(AudioAsset)
class AudioAssetAdmin(admin.ModelAdmin):
    list_display = [
        "content_hash_short",
        "original_name",
        "sample_rate",
        "channels",
        "duration_s",
        "peak_dbfs",
        "loudness_lufs",
        "created_at",
    ]
    list_filter = ["sample_rate", "channels"]
    search_fields = ["content_hash", "original_name"]
    readonly_fields = [f.name for f in AudioAsset._meta.fields] + ["player"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        # Assets come only from decoding audio (evalsite.audio.services); every field here is read-only,
        # so the add form could only save an empty row (a 500 on the NOT NULL columns).
        return False

    @admin.display(description="hash")
    def content_hash_short(self, obj: AudioAsset) -> str:
        return obj.content_hash[:12]

    @admin.display(description="listen")
    def player(self, obj: AudioAsset) -> str:
        return (
            format_html('<audio controls preload="none" src="{}"></audio>', obj.file.url) if obj.file else "-"
        )
