from django.contrib import admin, messages

from .hls_views import hls_tokens_revoke

from .models import (
    AuditEntry,
    ChatMessage,
    Classroom,
    HandRaise,
    LiveSession,
    MediaNode,
    Membership,
    Presence,
    Recording,
    RecordingFile,
    SessionEvent,
    StageMembership,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.action(description="Revoke operator playlist links (manage.py stream_key)")
def revoke_hls_tokens(modeladmin, request, queryset):  # noqa: ANN001, ANN201
    for classroom in queryset:
        hls_tokens_revoke(classroom_id=classroom.pk)
    modeladmin.message_user(
        request,
        f"Operator playlist links of {queryset.count()} class(es) no longer play; members' players are not affected.",
        messages.SUCCESS,
    )


@admin.register(Classroom)
class ClassroomAdmin(admin.ModelAdmin):
    list_display = ["title", "is_public", "created_at"]
    search_fields = ["title"]
    readonly_fields = ["hls_token_generation"]
    actions = [revoke_hls_tokens]
    inlines = [MembershipInline]


@admin.register(LiveSession)
class LiveSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "classroom", "status", "started_at", "ended_at", "media_node"]
    list_filter = ["status"]
    search_fields = ["classroom__title"]


@admin.register(SessionEvent)
class SessionEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "session", "kind", "actor", "subject"]
    list_filter = ["kind"]
    search_fields = ["session__classroom__title", "actor__username", "subject__username"]
    readonly_fields = [f.name for f in SessionEvent._meta.fields]


@admin.register(ChatMessage)
class ChatMessageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "session", "author", "text"]
    search_fields = ["text", "author__username"]


@admin.register(MediaNode)
class MediaNodeAdmin(admin.ModelAdmin):
    list_display = ["node_id", "peers", "capacity", "heartbeat_at", "started_at"]


admin.site.register(Membership)
admin.site.register(StageMembership)
admin.site.register(HandRaise)
admin.site.register(Presence)


class RecordingFileInline(admin.TabularInline):
    model = RecordingFile
    extra = 0
    can_delete = False
    fields = ["name", "role", "kind", "codec", "participant_name", "start_ms", "end_ms", "duration_ms", "size", "stored"]
    readonly_fields = fields


@admin.register(Recording)
class RecordingAdmin(admin.ModelAdmin):
    list_display = ["id", "classroom", "status", "started_at", "duration_ms", "size_bytes", "expires_at", "shared_with_students"]
    list_filter = ["status", "shared_with_students"]
    search_fields = ["classroom__title"]
    readonly_fields = ["manifest", "progress", "qc", "problems", "gaps", "stats", "worker", "heartbeat_at"]
    inlines = [RecordingFileInline]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: the audit log is written by the app, never edited."""

    list_display = ["at", "actor_name", "action", "recording_id", "target", "ip"]
    list_filter = ["action"]
    search_fields = ["actor_name", "target"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):  # noqa: ANN001, ANN201
        return False

    def has_change_permission(self, request, obj=None):  # noqa: ANN001, ANN201
        return False

    def has_delete_permission(self, request, obj=None):  # noqa: ANN001, ANN201
        return False
