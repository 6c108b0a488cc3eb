from django.contrib import admin

from .models import (
    ChatMessage,
    Classroom,
    HandRaise,
    LiveSession,
    MediaNode,
    Membership,
    Presence,
    SessionEvent,
    StageMembership,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Classroom)
class ClassroomAdmin(admin.ModelAdmin):
    list_display = ["title", "is_public", "created_at"]
    search_fields = ["title"]
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
