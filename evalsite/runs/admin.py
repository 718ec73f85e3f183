from django.contrib import admin

from evalsite.core.admin import HTTPS_URL_FIELDS
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run


class EvalItemInline(admin.TabularInline):
    model = EvalItem
    fields = ["key", "text", "speaker", "class_label", "reference"]
    raw_id_fields = ["reference"]
    extra = 0
    show_change_link = True


@admin.register(EvalSet)
class EvalSetAdmin(admin.ModelAdmin):
    list_display = ["name", "item_count", "created_at"]
    search_fields = ["name", "description"]
    inlines = [EvalItemInline]

    @admin.display(description="items")
    def item_count(self, obj: EvalSet) -> int:
        return obj.items.count()


@admin.register(EvalItem)
class EvalItemAdmin(admin.ModelAdmin):
    list_display = ["key", "eval_set", "speaker", "class_label", "text"]
    list_filter = ["eval_set", "speaker"]
    search_fields = ["key", "text", "speaker", "class_label", "reference__content_hash"]
    raw_id_fields = ["reference"]


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    fields = ["step", "uri", "status", "registered_at"]
    readonly_fields = ["registered_at"]
    extra = 0
    show_change_link = True


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URL_FIELDS
    list_display = ["name", "kind", "model_family", "eval_set", "owner", "api_token_prefix", "created_at"]
    list_filter = ["kind", "model_family"]
    search_fields = ["name", "model_family", "checkpoint_dir", "owner__username"]
    readonly_fields = ["api_token_hash", "api_token_prefix"]
    filter_horizontal = ["collaborators"]  # who besides the owner may see the run (evalsite.runs.access)
    inlines = [CheckpointInline]


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["run", "step", "status", "size_bytes", "registered_at"]
    list_filter = ["status", "run"]
    search_fields = ["run__name", "uri", "sha256"]


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ["checkpoint", "item", "seed", "status", "wall_time_s", "device"]
    list_filter = ["status", "device"]
    search_fields = ["checkpoint__run__name", "item__key", "params_hash", "asset__content_hash"]
    raw_id_fields = ["checkpoint", "item", "asset", "job"]
