from django.contrib import admin

from evalsite.core.admin import HTTPS_URL_FIELDS
from evalsite.listening.models import ArtifactFlag, Condition, ListeningTest, Participant, Rating, Trial


class ConditionInline(admin.TabularInline):
    model = Condition
    fields = ["label", "role", "checkpoint"]
    raw_id_fields = ["checkpoint"]
    extra = 0


@admin.register(ListeningTest)
class ListeningTestAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URL_FIELDS
    list_display = ["name", "kind", "status", "votes_target", "created_at", "published_at"]
    list_filter = ["kind", "status"]
    search_fields = ["name", "title", "invite_token"]
    readonly_fields = ["seed", "invite_token", "build_warnings", "published_at", "closed_at"]
    inlines = [ConditionInline]


@admin.register(Trial)
class TrialAdmin(admin.ModelAdmin):
    list_display = ["test", "index", "item", "is_training"]
    list_filter = ["test", "is_training"]
    search_fields = ["test__name", "item__key"]
    raw_id_fields = ["item", "reference"]


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = ["id", "test", "external_id", "status", "consented_at", "completed_at"]
    list_filter = ["test", "status"]
    search_fields = ["external_id", "study_id", "session_id", "token"]


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ["participant", "stimulus", "score", "is_training", "updated_at"]
    list_filter = ["participant__test", "is_training"]
    search_fields = ["participant__external_id", "request_id"]
    raw_id_fields = ["participant", "assignment", "stimulus"]


@admin.register(ArtifactFlag)
class ArtifactFlagAdmin(admin.ModelAdmin):
    list_display = ["participant", "stimulus", "category", "start_s", "end_s", "created_at"]
    list_filter = ["participant__test", "category"]
    search_fields = ["participant__external_id", "note"]
    raw_id_fields = ["participant", "assignment", "stimulus"]
