"""Training on a device with onnxruntime: the exported training-step and feature graphs
(`step_graph.py`, `export.py`, PyTorch) and what runs them on the device (`folder.py`,
`backend.py`: onnxruntime, tokenizers and numpy only)."""
