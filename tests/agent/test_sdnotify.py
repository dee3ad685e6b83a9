"""sd_notify messages on a real datagram socket."""
import socket

from edgesight.agent.sdnotify import Notifier


# -- sd_notify on a real datagram socket -------------------------------------------------------------------------
def test_notifier_sends_datagrams(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    n = Notifier(socket_path=path, watchdog_usec=2000000)
    assert n.ready("loaded")
    assert srv.recv(1024) == b"READY=1\nSTATUS=loaded"
    assert n.watchdog(now=100.0) and not n.watchdog(now=100.5)  # at most every WATCHDOG_USEC / 2
    assert srv.recv(1024) == b"WATCHDOG=1"
    assert n.watchdog(now=101.1)
    assert srv.recv(1024) == b"WATCHDOG=1"
    n.extend_timeout(90)
    assert srv.recv(1024) == b"EXTEND_TIMEOUT_USEC=90000000"
    n.stopping()
    assert srv.recv(1024) == b"STOPPING=1"
    n.close()
    srv.close()


def test_notifier_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready() and not n.watchdog()
