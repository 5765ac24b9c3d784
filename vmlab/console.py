"""The serial console: attach a terminal to a VM's console socket.

QEMU serves the console on a unix socket and logs every byte to console.log, so
attaching (and detaching) never disturbs the guest or loses output.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty
from pathlib import Path

from vmlab.errors import MachineError

DETACH_KEY = b"\x1d"  # Ctrl-]
DETACH_NAME = "Ctrl-]"


def attach(console_socket: Path, name: str) -> None:
    """Relay stdin/stdout to the console until the detach key (or end of input)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(console_socket))
    except OSError as e:
        raise MachineError(f"cannot attach to the console of VM {name} ({console_socket}): {e.strerror}") from None
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(fd_in)
    sys.stderr.write(f"[attached to the serial console of VM {name}; {DETACH_NAME} detaches]\r\n")
    saved = termios.tcgetattr(fd_in) if is_tty else None
    try:
        if is_tty:
            tty.setraw(fd_in)
        while True:
            ready, _, _ = select.select([sock, fd_in], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    sys.stderr.write("\r\n[the console closed: QEMU stopped]\r\n")
                    return
                os.write(fd_out, data)
            if fd_in in ready:
                data = os.read(fd_in, 1024)
                if not data or DETACH_KEY in data:
                    sock.sendall(data.split(DETACH_KEY, 1)[0])
                    return
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        sock.close()
        sys.stderr.write(f"\r\n[detached from VM {name}]\n")
