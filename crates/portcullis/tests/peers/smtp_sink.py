"""A real SMTP server for tests (aiosmtpd) that stores every message it receives in a Maildir.

usage: smtp_sink.py PORT MAILDIR — prints "listening on PORT" once it accepts connections and
runs until killed."""

import os
import signal
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

port, maildir = int(sys.argv[1]), sys.argv[2]
for part in ("cur", "new", "tmp"):
    os.makedirs(os.path.join(maildir, part), exist_ok=True)
controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port)
controller.start()
print(f"listening on {port}", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
controller.stop()
