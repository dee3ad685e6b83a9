"""On-device service (`edgesight agent`): config, frame sources, pipeline, thresholds, sampling, outbox, MQTT,
sd_notify. Built by the agent issue; nothing may import this package. Device-side: Python 3.8-compatible."""
