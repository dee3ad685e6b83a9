"""Subscribe to a broker on loopback and count distinct result ids until N arrive or the time is up (.ci/arm64.sh:
the agent runs in the emulated arm64 root, this runs on the host). Exit 0 when N arrived."""
import json
import sys
import time

import paho.mqtt.client as mqtt

port, want, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
seen = set()
c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edgesight/+/+/result", qos=1)
c.on_message = lambda cl, u, m: seen.add(json.loads(m.payload)["id"])
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
with open(sys.argv[4] if len(sys.argv) > 4 else "/dev/null", "w") as ready:
    ready.write("subscribed\n")
end = time.time() + timeout
while len(seen) < want and time.time() < end:
    time.sleep(0.1)
c.loop_stop()
print("%d distinct result(s) received" % len(seen))
sys.exit(0 if len(seen) >= want else 1)
