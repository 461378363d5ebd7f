"""Who may be in which room: the one rule every handler asks."""

import re

from roomcast import Refused

#: Chat rooms are ``chat:<name>``; roomcast's config routes their joins here.
ROOM_NAME = re.compile(r"chat:[a-z0-9][a-z0-9_-]{0,49}")

#: Rooms only staff users may join, read and post in.
STAFF_ROOMS = frozenset({"chat:staff"})

#: The rooms the chat page offers.
PUBLIC_ROOMS = ("chat:lobby", "chat:random")


def room_name(value):
    """`value` if it is a valid chat room name; refuses with ``invalid_room`` otherwise."""
    if not isinstance(value, str) or not ROOM_NAME.fullmatch(value):
        raise Refused("invalid_room", f"not a chat room: {value!r} (expected chat:<name>)")
    return value


def check_may_join(user, room):
    """Refuses unless `user` may be in `room` (join it, read and post there)."""
    room_name(room)
    if user is None:
        raise Refused("unauthenticated", "log in to chat")
    if room in STAFF_ROOMS and not user.is_staff:
        raise Refused("forbidden", f"{room} is for staff only")


def rooms_for(user):
    """The rooms the chat page offers to `user`."""
    return [*PUBLIC_ROOMS, *sorted(STAFF_ROOMS)] if user.is_staff else list(PUBLIC_ROOMS)
