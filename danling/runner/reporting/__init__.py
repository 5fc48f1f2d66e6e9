"""What a run reports: results, logs, the start banner, telemetry."""
