"""The build step: artifacts the engines load (HF model directories, later adapters,
merged and quantized models), each written atomically with a provenance manifest."""
