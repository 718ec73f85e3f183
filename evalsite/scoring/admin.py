from django.contrib import admin

from evalsite.scoring.models import CachedEmbedding, MetricResult, ReferenceStatistics


@admin.register(MetricResult)
class MetricResultAdmin(admin.ModelAdmin):
    list_display = ["checkpoint", "name", "status", "value", "n", "embedder", "duration_s"]
    list_filter = ["status", "name", "embedder"]
    search_fields = ["name", "checkpoint__run__name", "error", "embedder"]
    raw_id_fields = ["checkpoint", "reference_set"]


@admin.register(ReferenceStatistics)
class ReferenceStatisticsAdmin(admin.ModelAdmin):
    list_display = ["eval_set", "embedder", "n_clips", "n", "dim", "created_at"]
    search_fields = ["eval_set__name", "embedder", "fingerprint"]
    exclude = ["data"]


@admin.register(CachedEmbedding)
class CachedEmbeddingAdmin(admin.ModelAdmin):
    list_display = ["content_hash", "embedder", "frames", "dim", "created_at"]
    list_filter = ["embedder"]
    search_fields = ["content_hash", "embedder", "preprocess_key"]
    exclude = ["data"]
