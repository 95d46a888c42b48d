"""The build step: artifacts the engines load (HF model directories, adapters,
merged and quantized models), each written atomically with a provenance manifest."""
