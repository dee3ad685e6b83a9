#!/usr/bin/env bash
# The device side on arm64, emulated: a Debian trixie arm64 root (what Raspberry Pi OS is built on) made with
# debootstrap and run under qemu-user-static with binfmt_misc, the genuine aarch64 wheels of numpy, onnxruntime and
# ai-edge-litert inside. For a Pi 4 core (cortex-a72) and a Pi 5 core (cortex-a76):
#   1. the runtimes' contract tests on the real ARM kernels (tests/runtimes/test_runtimes.py);
#   2. every artifact of the converted example (FP32 ONNX and TFLite, both INT8 ONNX profiles, the converter's INT8
#      TFLite) on the same images: same top-1 as x86 on every image, outputs within tolerance;
#   3. the agent in the root publishing 50 results to a mosquitto on the host.
# Facts this works around (found by running it): qemu-user 7.2 passes the host's x86 /proc/cpuinfo through and
# onnxruntime then segfaults on import, so a matching arm64 cpuinfo is bind-mounted over it; the default emulated CPU
# (max, with SME) makes LiteRT's INT8 kernels return wrong numbers with no error, so QEMU_CPU is always the board's
# core; a minbase root has no /etc/hosts; pip inside needs the host's CA bundle and a clean environment.
# Nothing is cached: a fresh machine builds the root (about 5 minutes) every time.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
root=${EDGESIGHT_ARM64_ROOT:-$here/.arm64root}
work=$here/.arm64work
python=${PYTHON:-$here/.venv/bin/python}
t0=$(date +%s)

fail() { echo "arm64 stage FAILED: $*" >&2; exit 1; }
for tool in debootstrap update-binfmts chroot mosquitto; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || fail "$tool is not installed (apt-get install debootstrap qemu-user-static binfmt-support mosquitto)"
done
[ -x /usr/bin/qemu-aarch64-static ] || [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || fail "qemu-user-static is not installed"
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc (needs root)"
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || fail "binfmt_misc has no enabled qemu-aarch64 entry"

cleanup() {
    for m in "$root/proc/cpuinfo" "$root/proc" "$root/sys"; do mountpoint -q "$m" && umount -l "$m" || true; done
    [ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
}
trap cleanup EXIT

echo "== arm64: debootstrap trixie (minbase) into $root"
rm -rf "$work"
mkdir -p "$work"
if [ -n "${EDGESIGHT_ARM64_REUSE:-}" ] && [ -x "$root/usr/bin/python3" ]; then
    echo "   reusing $root (EDGESIGHT_ARM64_REUSE: for working on this script; CI always builds it)"
else
    rm -rf "$root"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
        trixie "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
fi
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/etc/edgesight-host" "$root/work"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/edgesight-host/ca.crt"
mountpoint -q "$root/proc/cpuinfo" && umount "$root/proc/cpuinfo"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/sys" || mount -t sysfs sys "$root/sys"
echo "   $(( $(date +%s) - t0 )) s"

in_root() {  # in_root CORE command...: run in the root as that core, with a clean environment
    local core=$1; shift
    mountpoint -q "$root/proc/cpuinfo" && umount "$root/proc/cpuinfo"
    mount --bind "$here/.ci/arm64/cpuinfo-$core" "$root/proc/cpuinfo"
    chroot "$root" /usr/bin/env -i PATH=/venv/bin:/usr/bin:/bin HOME=/root QEMU_CPU="$core" \
        PIP_CERT=/etc/edgesight-host/ca.crt PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

echo "== arm64: venv with the aarch64 wheels, edgesight's wheel"
"$python" -m pip wheel -q --no-deps -w "$work/wheel" . >/dev/null 2>&1
rm -rf "$root/venv" "$root/work"/*
mkdir -p "$root/work"
cp "$work"/wheel/edgesight-*.whl "$root/work/"
in_root cortex-a72 python3 -m venv /venv
# the install the Pi guide gives (docs/raspberry-pi.md): the wheel with the device extras, in a venv
in_root cortex-a72 pip install -q "/work/$(basename "$work"/wheel/edgesight-*.whl)[onnx,tflite,camera,agent]" pytest
in_root cortex-a72 python3 -c "import platform, numpy, onnxruntime, ai_edge_litert; print('  ', platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
cp -r tests examples bench "$root/work/"
echo "   $(( $(date +%s) - t0 )) s"

echo "== arm64: the example converted on x86 (both INT8 ONNX profiles, INT8 TFLite), its outputs on x86"
"$python" -m edgesight convert examples/digits/package/model.fp32.onnx --calib examples/digits/images/calib \
    --labels examples/digits/labels.txt --preprocess examples/digits/preprocess.yaml --calib-count 100 \
    --targets onnx-int8-trt,onnx-int8-cpu,tflite-int8 --out "$work/pkg" -q >/dev/null
# the FP32 TFLite of the example belongs in the comparison too
cp examples/digits/package/model.fp32.tflite "$work/pkg/"
"$python" - "$work/pkg" <<'EOF'
import os, sys
from edgesight.runtimes.manifest import Artifact, sha256_file
from edgesight.runtimes.package import ModelPackage
from edgesight.runtimes.package_write import with_artifacts, write_manifest
pkg = ModelPackage.load(sys.argv[1])
extra = Artifact(runtime="tflite", file="model.fp32.tflite", precision="fp32", layout="nhwc",
                 sha256=sha256_file(os.path.join(sys.argv[1], "model.fp32.tflite")))
write_manifest(pkg.root, with_artifacts(pkg.manifest, list(pkg.manifest.artifacts) + [extra]))
EOF
cp -r "$work/pkg" "$root/work/pkg"
"$python" tests/support/arch_outputs.py write "$work/pkg" examples/digits/images/val "$work/x86.npz"

for core in cortex-a72 cortex-a76; do
    echo "== arm64 $core: the runtimes' contract tests on the ARM kernels"
    in_root "$core" timeout 1200 sh -c "cd /work && python -m pytest -q -p no:cacheprovider tests/runtimes/test_runtimes.py" \
        || fail "contract tests on $core"
    echo "== arm64 $core: every artifact against x86 on the same images"
    in_root "$core" python /work/tests/support/arch_outputs.py write /work/pkg /work/examples/digits/images/val \
        "/work/$core.npz"
    cp "$root/work/$core.npz" "$work/"
    "$python" tests/support/arch_outputs.py compare "$work/x86.npz" "$work/$core.npz" || fail "outputs on $core"
    echo "   $(( $(date +%s) - t0 )) s"
done

echo "== arm64 cortex-a72: bench/runtimes.py runs (under emulation its numbers are not speed figures)"
in_root cortex-a72 timeout 600 python /work/bench/runtimes.py /work/pkg --images /work/examples/digits/images/val \
    --iterations 20 >"$work/bench.txt" 2>&1 || { tail -20 "$work/bench.txt"; fail "bench/runtimes.py on arm64"; }
sed 's/^/   /' "$work/bench.txt" | grep -v '^   INFO' | head -20

echo "== arm64: the agent in the root, the broker on the host"
port=$("$python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
printf 'listener %s 127.0.0.1\nallow_anonymous true\n%s\n' "$port" "$( [ "$(id -u)" = 0 ] && echo 'user root')" \
    >"$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
broker_pid=$!
cat >"$root/work/agent.yaml" <<EOF
device_id: pi-emulated
package: /work/pkg
cameras:
  - name: front
    source: {type: folder, path: /work/examples/digits/images/val, fps: 20, loop: false}
mqtt: {host: 127.0.0.1, port: $port}
outbox: {path: /work/outbox.db}
stats: {interval: 2}
EOF
sleep 1
"$python" tests/support/count_results.py "$port" 50 240 "$work/subscribed" &
counter=$!
for _ in $(seq 150); do [ -s "$work/subscribed" ] && break; sleep 0.2; done
[ -s "$work/subscribed" ] || fail "the host's subscriber did not connect to the broker within 30 s"
in_root cortex-a72 timeout 600 python -m edgesight agent --config /work/agent.yaml --max-frames 50 --drain-timeout 30 \
    2>"$work/agent.log" || { tail -20 "$work/agent.log"; fail "the agent exited non-zero"; }
wait "$counter" || fail "the host's subscriber did not see 50 results"
echo "== arm64 stage passed in $(( $(date +%s) - t0 )) s (runtimes: see above; the agent ran on $(in_root cortex-a72 python -c "from edgesight.runtimes import load_package; print(load_package('/work/pkg').artifact_for('auto').artifact.file)"))"
