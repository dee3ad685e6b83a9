"""TLS (server verification), mutual TLS, password auth and an ACL that refuses a topic, against mosquitto."""
import os
import shutil
import sqlite3

import pytest

from support import require_or_skip
from support.mqtt import Broker, Collector, agent_config, mosquitto_binary, start_agent
from support.pki import make_pki, passwd_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require_or_skip(shutil.which("openssl") is not None, "openssl")
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def run_agent(cfg, timeout=90):
    proc = start_agent(cfg, "--max-frames", "20", "--drain-timeout", "5")
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def tls_broker(tmp_path, pki, require_certificate=False, extra=""):
    require_or_skip(mosquitto_binary() is not None, "mosquitto")
    return Broker(tmp_path / "broker", extra_conf=extra, tls={
        "ca": pki["ca"], "cert": pki["server_cert"], "key": pki["server_key"],
        "require_certificate": require_certificate}).start()


def test_tls_with_server_verification(tmp_path, pki):
    b = tls_broker(tmp_path, pki)
    try:
        sub = Collector(b.port, tls={"ca": pki["ca"]})
        code, err = run_agent(agent_config(tmp_path, b.port, mqtt={"host": "localhost", "port": b.port,
                                                                   "tls": {"ca_file": pki["ca"]}}))
        assert code == 0, err[-2000:]
        assert sub.wait_for(lambda s: len(s.of("result")) >= 19, 10)
        sub.close()
    finally:
        b.stop()


def test_tls_refuses_a_server_it_cannot_verify(tmp_path, pki):
    b = tls_broker(tmp_path, pki)
    try:
        cfg = agent_config(tmp_path, b.port, mqtt={"host": "localhost", "port": b.port,
                                                   "tls": {"ca_file": pki["other_ca"]}})
        code, err = run_agent(cfg)
        assert code == 0
        db = sqlite3.connect(str(tmp_path / "outbox.db"))
        assert db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'result'").fetchone()[0] >= 19  # nothing left
        assert "certificate verify failed" in err or "CERTIFICATE_VERIFY_FAILED" in err, err[-2000:]
    finally:
        b.stop()


def test_mutual_tls(tmp_path, pki):
    b = tls_broker(tmp_path, pki, require_certificate=True)
    try:
        sub = Collector(b.port, tls={"ca": pki["ca"], "cert": pki["client_cert"], "key": pki["client_key"]})
        cfg = agent_config(tmp_path, b.port, mqtt={"host": "localhost", "port": b.port, "tls": {
            "ca_file": pki["ca"], "cert_file": pki["client_cert"], "key_file": pki["client_key"]}})
        code, err = run_agent(cfg)
        assert code == 0, err[-2000:]
        assert sub.wait_for(lambda s: len(s.of("result")) >= 19, 10)
        sub.close()
    finally:
        b.stop()


def test_password_from_file_and_env(tmp_path, monkeypatch):
    require_or_skip(mosquitto_binary() is not None and shutil.which("mosquitto_passwd"), "mosquitto_passwd")
    pw = passwd_file(tmp_path, {"dev1": "s3cret-pw", "reader": "r"})
    b = Broker(tmp_path / "broker", extra_conf="allow_anonymous false\npassword_file %s\n" % pw).start()
    try:
        sub = Collector(b.port, username="reader", password="r")
        secret = tmp_path / "mqtt.pass"
        secret.write_text("s3cret-pw\n")
        code, err = run_agent(agent_config(tmp_path, b.port, mqtt={
            "host": "127.0.0.1", "port": b.port, "username": "dev1", "password_file": str(secret)}))
        assert code == 0, err[-2000:]
        assert sub.wait_for(lambda s: len(s.of("result")) >= 19, 10)
        assert "s3cret-pw" not in err  # never logged
        os.unlink(str(tmp_path / "outbox.db"))
        proc = start_agent(agent_config(tmp_path, b.port, mqtt={
            "host": "127.0.0.1", "port": b.port, "username": "dev1", "password_env": "EDGESIGHT_TEST_PW"}),
            "--max-frames", "5", "--drain-timeout", "3", env={"EDGESIGHT_TEST_PW": "wr0ng-pw-xyz"})
        _, err = proc.communicate(timeout=60)
        assert "refused the connection" in err, err[-2000:]
        assert "Not authorized" in err or "Bad user name or password" in err, err[-2000:]
        assert "wr0ng-pw-xyz" not in err
        sub.close()
    finally:
        b.stop()


def test_acl_denied_topic_goes_to_dead_letter(tmp_path):
    require_or_skip(mosquitto_binary() is not None and shutil.which("mosquitto_passwd"), "mosquitto_passwd")
    pw = passwd_file(tmp_path, {"dev1": "pw"})
    acl = tmp_path / "acl"
    acl.write_text("user dev1\ntopic write edgesight/dev1/status\ntopic write edgesight/dev1/stats\n"
                   "topic write edgesight/dev1/front/state\ntopic write edgesight/dev1/front/sample\n"
                   "topic write edgesight/dev1/config/sampling/status\ntopic read edgesight/dev1/config/sampling\n"
                   "topic write edgesight/dev1/model/state\ntopic read edgesight/dev1/model/desired\n")
    b = Broker(tmp_path / "broker", extra_conf="allow_anonymous false\npassword_file %s\nacl_file %s\n"
               % (pw, acl)).start()
    try:
        secret = tmp_path / "pw"
        secret.write_text("pw")
        cfg = agent_config(tmp_path, b.port, mqtt={"host": "127.0.0.1", "port": b.port, "username": "dev1",
                                                   "password_file": str(secret)},
                           outbox={"path": str(tmp_path / "outbox.db"), "max_attempts": 2})
        code, err = run_agent(cfg)
        assert code == 0, err[-2000:]  # refusals never stop the agent
        db = sqlite3.connect(str(tmp_path / "outbox.db"))
        dead = db.execute("SELECT topic, attempts, reason FROM dead_letter").fetchall()
        assert len(dead) >= 19 and all(t == "edgesight/dev1/front/result" and n == 2 for t, n, _ in dead)
        assert "authorized" in dead[0][2].lower()
        assert db.execute("SELECT value FROM counters WHERE name = 'sent_state'").fetchone()[0] >= 1  # allowed
    finally:
        b.stop()
