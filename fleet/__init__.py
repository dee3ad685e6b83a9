"""Fleet side (`edgesight collect`): sample collector. Depends only on the MQTT contract (docs/mqtt.md); built by
the sampling/collector issue."""
