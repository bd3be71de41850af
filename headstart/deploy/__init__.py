"""Deployment: ONNX export with its parity check, streaming and sharded prediction (resumable from a checkpoint),
and the HTTP server with its guards. Each module is imported by name; this file imports nothing."""
