"""Real weights: fetching them from the Hugging Face hub (`imagesynth models pull`), finding
them on this machine (`weights = "auto"`), and whether they fit the GPU.

Nothing here imports torch: the API process resolves the catalog too (it must know whether a
model runs demo or real weights to pick its default steps)."""
