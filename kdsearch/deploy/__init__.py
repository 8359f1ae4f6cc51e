"""Shipping a student: export to ONNX or TorchScript with its preprocessing and class names
inside the file, and prediction from any of the three forms (checkpoint, ONNX, TorchScript)."""
