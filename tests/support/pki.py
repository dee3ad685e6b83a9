"""Test certificates (a CA, a server and a client certificate, and a second CA the broker does not use) made with
the real openssl, and mosquitto password files made with the real mosquitto_passwd."""
import os
import subprocess


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def make_pki(d: str) -> dict:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgesight test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in (("server", "localhost"), ("client", "dev1")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % cn, "-keyout", name + ".key",
                "-out", name + ".csr", cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", name + ".pem", *(["-extfile", "san.ext"] if name == "server" else []), cwd=d)
    # a second CA the broker does not use: verification against it must fail
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other CA",
            "-keyout", "other.key", "-out", "other.pem", cwd=d)
    return {k: os.path.join(d, v) for k, v in (("ca", "ca.pem"), ("server_cert", "server.pem"),
                                               ("server_key", "server.key"), ("client_cert", "client.pem"),
                                               ("client_key", "client.key"), ("other_ca", "other.pem"))}


def passwd_file(tmp_path, users):
    path = str(tmp_path / "passwd")
    open(path, "w").close()
    for user, pw in users.items():
        subprocess.run(["mosquitto_passwd", "-b", path, user, pw], check=True, timeout=30)
    return path
