"""The one YAML loader (configfile.py) and the shared file helpers (files.py)."""
import os
import time

import pytest
import yaml

from edgesight import configfile
from edgesight.errors import ConfigError, PackageError
from edgesight.files import atomic_write, read_labels

from support import run_cli


def parse(text):
    return configfile.parse(text, "x.yaml")


def test_a_plain_document_and_its_lines():
    doc = parse("a: 1\nb:\n  - {c: 2}\n  - {c: 3, d: [4]}\n")
    assert doc.data == {"a": 1, "b": [{"c": 2}, {"c": 3, "d": [4]}]}
    assert doc.line_of(("a",)) == 1 and doc.line_of(("b", 1, "d")) == 4 and doc.line_of(("b", 9)) == 2


@pytest.mark.parametrize("text, field, needle", [
    ("a: 1\nb: 2\na: 3\n", "a", "duplicate key 'a' (first given at line 1)"),
    ("m:\n  x: 1\n  x: 2\n", "m.x", "duplicate key 'x'"),
    ("l:\n  - {k: 1, k: 2}\n", "l[0].k", "duplicate key 'k'"),
    ("a: &x 1\nb: *x\n", "a", "anchors"),
    ("a: [*x]\n", "a[0]", "aliases"),
])
def test_refused_yaml_names_the_field(text, field, needle):
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert err.value.field == field and needle in str(err.value), str(err.value)


@pytest.mark.parametrize("text, needle", [
    ("[" * 1000, "nested deeper than"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 60)), "nested deeper than"),
    ("a: b: c\n", "YAML syntax error at line 1"),
    ("a: !!binary zz\n", "base64"),
    ("a: 2026-13-45\n", "cannot be read"),
    ("a: \x07\n", "control character"),
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
])
def test_hostile_yaml_is_one_config_error(text, needle):
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert needle in str(err.value), str(err.value)


def test_the_billion_laughs_costs_nothing():
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += ["a%d: &a%d [%s]" % (i, i, ", ".join(["*a%d" % (i - 1)] * 9)) for i in range(1, 10)]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="anchors"):
        parse("\n".join(levels) + "\n")
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("data, needle", [(b"a: \xff\xfe\n", "not UTF-8 text (byte 0xff at line 1)"),
                                          (b"a: 1\nb: \x00\n", "NUL byte at line 2"),
                                          (b"x" * (2 << 20), "larger than")])
def test_bytes_that_are_not_a_text_file(tmp_path, data, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    with pytest.raises(PackageError) as err:
        configfile.load(str(p), "package manifest", PackageError)
    assert needle in str(err.value) and str(p) in str(err.value)


def test_a_bom_is_fine(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert configfile.load(str(p), "config").data == {"a": 1}


def test_alias_bomb_in_a_package_manifest_is_refused_at_once(package_copy):
    path = os.path.join(package_copy, "edgesight.yaml")
    with open(path) as f:
        data = yaml.safe_load(f)
    data.pop("validation", None)
    text = yaml.safe_dump(data, sort_keys=False)
    bomb = "validation:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        "  b%d: &b%d [%s]\n" % (i, i, ", ".join(["*a" if i == 0 else "*b%d" % (i - 1)] * 10)) for i in range(8))
    with open(path, "w") as f:
        f.write(text + bomb)
    assert len(bomb) < 1024
    t0 = time.monotonic()
    r = run_cli("info", package_copy)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 3 and "anchors" in r.stderr and "field 'validation.a'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_duplicate_keys_in_a_package_manifest(package_copy):
    path = os.path.join(package_copy, "edgesight.yaml")
    with open(path, "a") as f:
        f.write("name: other-name\n")
    r = run_cli("info", package_copy)
    assert r.returncode == 3 and "duplicate key 'name'" in r.stderr and "field 'name'" in r.stderr, r.stderr


def test_atomic_write_replaces_whole_files_only(tmp_path):
    p = str(tmp_path / "f.txt")
    atomic_write(p, "one")
    atomic_write(p, b"two", mode=0o600, sync_dir=True)
    assert open(p).read() == "two" and oct(os.stat(p).st_mode & 0o777) == "0o600"
    assert os.listdir(str(tmp_path)) == ["f.txt"]  # no temporary file left behind


def test_read_labels(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_text("# classes\ncat\n\n  dog \n")
    assert read_labels(str(p)) == ["cat", "dog"]
    for content, needle in ((b"cat\ncat\n", "repeated: cat"), (b"# only a comment\n", "empty"),
                            (b"\xff\xfe\xfa\n", "not UTF-8"), (("x" * 300 + "\n").encode(), "longer than")):
        p.write_bytes(content)
        with pytest.raises(ConfigError) as err:
            read_labels(str(p), field="--labels")
        assert needle in str(err.value) and err.value.field == "--labels", str(err.value)
