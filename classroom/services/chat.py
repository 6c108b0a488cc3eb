"""Chat alongside the stage."""
from __future__ import annotations

from django.db import transaction

from ..errors import InvalidState, NotAllowed
from ..models import ChatMessage, SessionEvent
from ..notify import class_broadcast_on_commit
from ..permissions import Actor, can_chat
from ..selectors import chat_message_json
from ..signaling.messages import MAX_CHAT_CHARS, text_problem
from .sessions import session_require_live


@transaction.atomic
def chat_post(*, classroom_id: int, actor: Actor, text: str) -> ChatMessage:
    if not can_chat(actor):
        raise NotAllowed("only members of the class can chat")
    text = text.strip()
    if not text:
        raise InvalidState("an empty message is not sent")
    if len(text) > MAX_CHAT_CHARS:
        raise InvalidState(f"a message holds at most {MAX_CHAT_CHARS} characters")
    problem = text_problem(text, multiline=True)  # the socket checks too; this guards every other caller
    if problem:
        raise InvalidState(f"the message {problem}")
    session = session_require_live(classroom_id=classroom_id)
    message = ChatMessage.objects.create(session=session, author_id=actor.user_id, text=text)
    message.refresh_from_db()
    # The log keeps the reference only; the text lives in ChatMessage.
    SessionEvent.objects.create(session=session, kind="chat.message", actor_id=actor.user_id, data={"message_id": message.pk})
    payload = {"type": "classroom.chat", "message": chat_message_json(message)}
    class_broadcast_on_commit(classroom_id=classroom_id, build=lambda: payload)
    return message
