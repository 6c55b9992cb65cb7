"""Using a trained model: export it (TorchScript, ONNX, safetensors + a calibrated sidecar),
embed folders of images, verify pairs, enroll galleries and identify probes, from a
checkpoint or any exported file (:func:`facetrip.deploy.embedder.load_embedder`)."""
