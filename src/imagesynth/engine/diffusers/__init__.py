"""The `diffusers` backend: Hugging Face diffusers pipelines run in the worker's process, one
module per family (qwen_image, wan, stable_diffusion, z_image), and the tiny offline demo
weights."""
