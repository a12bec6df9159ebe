"""Reading and writing checkpoints: safetensors headers, strict loading, streamed writes, atomic directories."""
