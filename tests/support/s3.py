"""A real S3 HTTP endpoint on loopback for tests: moto's standalone server (``moto[server]``) as its own process,
which implements conditional writes (``If-None-Match: *``), behind a small TCP relay. ``pause()`` takes the
endpoint away (the relay closes its listener and every open connection: clients get "connection refused", as from
a stopped server) and ``resume()`` brings it back with its data (moto keeps objects in memory: a real restart of
moto would lose them)."""
import os
import socket
import subprocess
import sys
import threading
import time

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay(object):
    """127.0.0.1:port -> 127.0.0.1:target, byte for byte, that can stop listening and drop its connections."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.conns = []
        self.lock = threading.Lock()
        self.listener = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass


class S3Server(object):
    def __init__(self) -> None:
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.moto_port = free_port()
        self.relay = Relay(self.port, self.moto_port)
        self.proc = None

    def start(self, timeout: float = 30.0) -> "S3Server":
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                      str(self.moto_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, **CREDENTIALS))
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("moto server exited with %s" % self.proc.returncode)
            try:
                with socket.create_connection(("127.0.0.1", self.moto_port), timeout=0.2):
                    self.relay.start()
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not listen on %d" % self.port)

    def client(self):
        import boto3

        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                     region_name="us-east-1").client("s3", endpoint_url=self.url)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = ""):
        c, out, token = self.client(), [], None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = c.list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return out

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def pause(self) -> None:
        self.relay.stop()

    def resume(self) -> None:
        if self.relay.listener is None:
            self.relay.start()

    def stop(self) -> None:
        self.relay.stop()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
