"""kombu's filesystem transport (the embedded default's broker), with each message written atomically.

kombu creates a message file, then writes it; a worker polling the folder in between moves the empty
file away, fails to parse it and dies (``JSONDecodeError``), and the message is lost. Here a message
is written under a name the workers skip and renamed into place when complete: ``os.replace`` within
one folder is atomic, so a worker sees a whole message or none.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # kombu's own naming: workers take "<ms>_<uuid>.<queue>.msg" in order and skip other names.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
